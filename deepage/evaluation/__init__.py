"""Evaluation: predictions over a split, the study's and the field's metrics, plots, reports, leaderboards."""
