"""Metrics: the study's (accuracy, precision, recall, F1, ROC/AUC) and the field's (MAE, CS@5, one-off).

Class metrics come from scikit-learn; MAE, CS@k and one-off accuracy are one line each.
"""

from __future__ import annotations

import numpy as np

from ..labels import get_scheme
from .predictions import Predictions

__all__ = ["mae", "cumulative_score", "one_off_accuracy", "core_metrics"]


def mae(age_true: np.ndarray, age_pred: np.ndarray) -> float:
    """Mean absolute error in years."""
    return float(np.mean(np.abs(np.asarray(age_pred, float) - np.asarray(age_true, float))))


def cumulative_score(age_true: np.ndarray, age_pred: np.ndarray, k: float = 5) -> float:
    """CS@k: fraction of images whose age error is at most ``k`` years."""
    return float(np.mean(np.abs(np.asarray(age_pred, float) - np.asarray(age_true, float)) <= k))


def one_off_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of predictions in the true class or an adjacent one."""
    return float(np.mean(np.abs(np.asarray(y_true) - np.asarray(y_pred)) <= 1))


def core_metrics(preds: Predictions) -> dict:
    """The few numbers watched during training: ``{scheme: {accuracy, one_off}, age: {mae, cs5}, n}``."""
    out: dict = {"n": int(len(preds))}
    for name, probs in preds.class_probs.items():
        y_true = np.asarray(get_scheme(name).classify(preds.age_true))
        y_pred = probs.argmax(axis=1)
        out[name] = {"accuracy": float(np.mean(y_true == y_pred)), "one_off": one_off_accuracy(y_true, y_pred)}
    if preds.age_pred is not None:
        out["age"] = {"mae": mae(preds.age_true, preds.age_pred),
                      "cs5": cumulative_score(preds.age_true, preds.age_pred, 5)}
    return out
