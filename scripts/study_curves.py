"""Validation accuracy and MAE against CPU minutes of training, one line per run (issue 9's backbone study).

    python scripts/study_curves.py runs/study/* --out docs/results/study/curves.png

Reads each run folder's ``history.json`` or ``metrics.csv`` (one row per epoch: ``train_seconds``,
``val_utk14_accuracy``, ``val_age_mae``...) and ``config.yaml``; the x axis is the training time the budget
counts (validation excluded), or with ``--x epochs`` the epochs (for runs made on machines of other speeds).
Also prints the rows as a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402


def _history(run: Path) -> list[dict] | None:
    """The run's epoch rows: ``history.json``, else ``metrics.csv`` (what ``docs/results`` keeps)."""
    if (run / "history.json").is_file():
        return json.loads((run / "history.json").read_text())
    if (run / "metrics.csv").is_file():
        with open(run / "metrics.csv", newline="") as fh:
            return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with history.json)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--x", choices=("minutes", "epochs"), default="minutes",
                        help="x axis: training minutes (machines of other speeds are not comparable) or epochs")
    args = parser.parse_args()
    fig, (ax_acc, ax_mae) = plt.subplots(1, 2, figsize=(11, 4.2))
    print("| run | epoch | CPU min | img/s | val 14-cls | val 8-cls | val MAE | val CS@5 |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        history = _history(run)
        if history is None:
            continue
        config = yaml.safe_load((run / "config.yaml").read_text())
        minutes = [row["epoch"] if args.x == "epochs" else row["train_seconds"] / 60 for row in history]
        label = f"{run.name} ({config['model']}, {config.get('input_size')} px)"
        ax_acc.plot(minutes, [100 * row["val_utk14_accuracy"] for row in history], marker="o", label=label)
        ax_mae.plot(minutes, [row["val_age_mae"] for row in history], marker="o", label=label)
        for row, m in zip(history, minutes, strict=True):
            print(f"| {run.name} | {row['epoch']:.2f} | {m:.1f} | {row.get('train_img_per_s', '–')} | "
                  f"{100 * row['val_utk14_accuracy']:.1f} % | {100 * row['val_utk8_accuracy']:.1f} % | "
                  f"{row['val_age_mae']:.3f} | {100 * row['val_age_cs5']:.1f} % |")
    xlabel = "epochs" if args.x == "epochs" else "CPU minutes of training"
    ax_acc.set(xlabel=xlabel, ylabel="validation 14-class accuracy (%)")
    ax_mae.set(xlabel=xlabel, ylabel="validation MAE (years)")
    # The first epochs (EMA still near the initial weights) would squash the interesting part of the plot.
    ax_mae.set_ylim(top=min(ax_mae.get_ylim()[1], 7.0))
    ax_acc.set_ylim(bottom=max(ax_acc.get_ylim()[0], 30.0))
    for ax in (ax_acc, ax_mae):
        ax.grid(alpha=0.3)
    ax_mae.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
