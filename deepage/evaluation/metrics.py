"""Metrics: the study's (accuracy, precision, recall, F1, ROC/AUC) and the field's (MAE, CS@5, one-off).

Class metrics come from scikit-learn; MAE, CS@k and one-off accuracy are one line each. Every mean is over
samples (never a mean of batch means), and every value is a plain float or ``None`` (never NaN), so the
dictionaries go straight into JSON.

Conventions, chosen to match :func:`sklearn.metrics.classification_report` so numbers can be cross-checked:

* Macro precision/recall/F1 average over the classes *seen* (present in the truth or in the predictions);
  a class neither present nor predicted has ``None`` per-class values and is left out of the means.
* One-vs-rest ROC AUC per class needs at least one positive and one negative sample; otherwise it is
  ``None`` and the class is left out of ``macro_auc`` (listed in ``auc_excluded``).

>>> round(mae(np.array([20, 30]), np.array([22, 27])), 2)
2.5
>>> cumulative_score(np.array([20, 30]), np.array([26, 30]), k=5)
0.5
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from ..answers import AgeGate
from ..labels import get_scheme
from .predictions import Predictions

__all__ = [
    "mae",
    "paired_bootstrap",
    "cumulative_score",
    "cs_curve",
    "one_off_accuracy",
    "core_metrics",
    "one_vs_rest_auc",
    "reliability_bins",
    "expected_calibration_error",
    "classification_metrics",
    "age_metrics",
    "prediction_metrics",
    "full_metrics",
    "GENDER_NAMES",
    "RACE_NAMES",
    "group_names",
    "json_safe",
    "age_bands",
    "age_gate_rates",
    "age_gate_metrics",
    "AGE_BAND_EDGES",
]

GENDER_NAMES = {0: "male", 1: "female", -1: "unknown"}
"""UTKFace gender codes."""
RACE_NAMES = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others", -1: "unknown"}
"""UTKFace race codes."""


def mae(age_true: np.ndarray, age_pred: np.ndarray) -> float:
    """Mean absolute error in years over ``(N,)`` true and predicted ages."""
    return float(np.mean(np.abs(np.asarray(age_pred, float) - np.asarray(age_true, float))))


def paired_bootstrap(per_image_a: np.ndarray, per_image_b: np.ndarray, n_boot: int = 2000,
                     seed: int = 0) -> dict:
    """How sure a difference between two models scored on the same images is: ``(N,)`` per-image scores
    (absolute errors, or 1/0 for a correct class) of model A and model B, resampled together (the same
    images for both, so the spread is that of the *paired* difference, much smaller than either score's).
    Returns ``{"difference": mean(B) - mean(A), "se": its bootstrap standard error, "ci95": [lo, hi]}``."""
    a, b = np.asarray(per_image_a, float), np.asarray(per_image_b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired scores need two equal, non-empty 1-D arrays, got {a.shape} and {b.shape}")
    diff = b - a
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    return {"difference": float(diff.mean()), "se": float(means.std(ddof=1)),
            "ci95": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]}


def cumulative_score(age_true: np.ndarray, age_pred: np.ndarray, k: float = 5) -> float:
    """CS@k: fraction of images whose age error is at most ``k`` years."""
    return float(np.mean(np.abs(np.asarray(age_pred, float) - np.asarray(age_true, float)) <= k))


def cs_curve(age_true: np.ndarray, age_pred: np.ndarray, max_k: int = 10) -> list[float]:
    """``[CS@0, CS@1, ..., CS@max_k]`` (a list of ``max_k + 1`` fractions)."""
    return [cumulative_score(age_true, age_pred, k) for k in range(max_k + 1)]


def one_off_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of predictions in the true class or an adjacent one."""
    return float(np.mean(np.abs(np.asarray(y_true) - np.asarray(y_pred)) <= 1))


def core_metrics(preds: Predictions) -> dict:
    """The few numbers watched during training: ``{scheme: {accuracy, one_off}, age: {mae, cs5}, n}``."""
    out: dict = {"n": int(len(preds))}
    for name, probs in preds.class_probs.items():
        y_true = np.asarray(get_scheme(name).classify(preds.age_true))
        y_pred = probs.argmax(axis=1)
        out[name] = {
            "accuracy": float(np.mean(y_true == y_pred)),
            "one_off": one_off_accuracy(y_true, y_pred),
        }
    if preds.age_pred is not None:
        out["age"] = {
            "mae": mae(preds.age_true, preds.age_pred),
            "cs5": cumulative_score(preds.age_true, preds.age_pred, 5),
        }
    return out


def _float_or_none(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def json_safe(obj):
    """A copy of ``obj`` with numpy scalars/arrays turned into Python values and NaN/inf into ``None``."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _float_or_none(obj)
    return obj


def one_vs_rest_auc(y_true: np.ndarray, probs: np.ndarray) -> list[float | None]:
    """ROC AUC of each class against the rest.

    ``y_true``: ``(N,)`` class indices; ``probs``: ``(N, C)`` scores. A class without positives (or without
    negatives) has no ROC curve: its entry is ``None``.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, float)
    out: list[float | None] = []
    for c in range(probs.shape[1]):
        positive = y_true == c
        if positive.all() or not positive.any():
            out.append(None)
        else:
            out.append(float(roc_auc_score(positive, probs[:, c])))
    return out


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict:
    """Top-class confidence against accuracy in ``n_bins`` equal-width confidence bins over ``[0, 1]``.

    Returns ``{edges (n_bins + 1,), confidence, accuracy, count}``; the last three have one entry per bin
    (``None`` for empty bins).
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, float)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin b holds (edges[b], edges[b+1]]; a confidence of exactly 0 joins the first bin.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    confidence, accuracy, count = [], [], []
    for b in range(n_bins):
        sel = which == b
        count.append(int(sel.sum()))
        confidence.append(float(conf[sel].mean()) if sel.any() else None)
        accuracy.append(float(correct[sel].mean()) if sel.any() else None)
    return {"edges": edges.tolist(), "confidence": confidence, "accuracy": accuracy, "count": count}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE: sample-weighted mean over confidence bins of ``|accuracy - mean confidence|`` (top class)."""
    bins = reliability_bins(y_true, probs, n_bins)
    n = max(1, sum(bins["count"]))
    return float(
        sum(
            c / n * abs(a - p)
            for c, a, p in zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True)
            if c
        )
    )


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> dict:
    """Every class metric of one label scheme.

    ``y_true``: ``(N,)`` class indices in ``[0, C)``; ``probs``: ``(N, C)`` class probabilities (the
    prediction is the arg-max). Returns accuracy, balanced accuracy, one-off accuracy, macro/weighted
    precision, recall and F1, per-class values, one-vs-rest AUCs (``macro_auc`` over the classes that have
    an ROC curve, the others named in ``auc_excluded``), the ``(C, C)`` confusion matrix (rows: truth) and
    the expected calibration error ``ece``.
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, float)
    C = len(class_names)
    if probs.ndim != 2 or probs.shape != (len(y_true), C):
        raise ValueError(f"probabilities have shape {probs.shape}; expected ({len(y_true)}, {C})")
    if len(y_true) == 0:
        raise ValueError("no samples to compute class metrics on")
    if y_true.min() < 0 or y_true.max() >= C:
        raise ValueError(f"true classes must lie in [0, {C}); got {y_true.min()}..{y_true.max()}")
    y_pred = probs.argmax(axis=1)
    labels = list(range(C))
    seen = sorted(set(y_true.tolist()) | set(y_pred.tolist()))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" and similar
        p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        macro = precision_recall_fscore_support(y_true, y_pred, labels=seen, average="macro", zero_division=0)
        weighted = precision_recall_fscore_support(
            y_true, y_pred, labels=seen, average="weighted", zero_division=0
        )
        balanced = balanced_accuracy_score(y_true, y_pred)
    aucs = one_vs_rest_auc(y_true, probs)
    valid_aucs = [a for a in aucs if a is not None]
    seen_set = set(seen)
    per_class = {}
    for c, name in enumerate(class_names):
        known = c in seen_set
        per_class[name] = {
            "precision": float(p[c]) if known else None,
            "recall": float(r[c]) if known else None,
            "f1": float(f[c]) if known else None,
            "support": int(s[c]),
            "auc": aucs[c],
        }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "one_off": one_off_accuracy(y_true, y_pred),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "weighted_precision": float(weighted[0]),
        "weighted_recall": float(weighted[1]),
        "weighted_f1": float(weighted[2]),
        "macro_auc": float(np.mean(valid_aucs)) if valid_aucs else None,
        "auc_excluded": [class_names[c] for c, a in enumerate(aucs) if a is None],
        "ece": expected_calibration_error(y_true, probs),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }


def age_metrics(age_true: np.ndarray, age_pred: np.ndarray, interval: np.ndarray | None = None) -> dict:
    """``{mae, cs5, cs_curve (CS@0..10), rmse, median_ae, bias}`` in years; ``bias`` = mean(pred - true).

    With ``interval`` ``(N, 2)`` (the reported low and high age) also ``interval_coverage``, the fraction
    of true ages inside it (0.8 for a calibrated 10th-90th percentile interval), and ``interval_width``,
    its mean width in years.
    """
    err = np.asarray(age_pred, float) - np.asarray(age_true, float)
    out = {
        "mae": mae(age_true, age_pred),
        "cs5": cumulative_score(age_true, age_pred, 5),
        "cs_curve": cs_curve(age_true, age_pred, 10),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "median_ae": float(np.median(np.abs(err))),
        "bias": float(np.mean(err)),
    }
    if interval is not None:
        low, high = np.asarray(interval, float).T
        true = np.asarray(age_true, float)
        out["interval_coverage"] = float(np.mean((true >= low) & (true <= high)))
        out["interval_width"] = float(np.mean(high - low))
    return out


def prediction_metrics(preds: Predictions) -> dict:
    """``{scheme: classification_metrics, age: age_metrics, n}`` for whatever ``preds`` answers."""
    out: dict = {"n": int(len(preds))}
    for name, probs in preds.class_probs.items():
        scheme = get_scheme(name)
        y_true = np.asarray(scheme.classify(np.asarray(preds.age_true)))
        out[name] = classification_metrics(y_true, probs, scheme.names)
    if preds.age_pred is not None:
        out["age"] = age_metrics(preds.age_true, preds.age_pred, preds.age_interval)
    return out


def _subset(preds: Predictions, mask: np.ndarray) -> Predictions:
    return Predictions(
        age_true=np.asarray(preds.age_true)[mask],
        age_pred=None if preds.age_pred is None else np.asarray(preds.age_pred)[mask],
        class_probs={k: np.asarray(v)[mask] for k, v in preds.class_probs.items()},
        index=None if preds.index is None else np.asarray(preds.index)[mask],
        age_interval=None if preds.age_interval is None else np.asarray(preds.age_interval)[mask],
        age_probs=None if preds.age_probs is None else np.asarray(preds.age_probs)[mask],
    )


def group_names(codes: np.ndarray, names: dict[int, str]) -> dict[str, np.ndarray]:
    """Group name → boolean mask ``(N,)`` for each code present in ``codes`` (in code order, unknown last).

    An unexpected code becomes the group ``"code <k>"``.
    """
    codes = np.asarray(codes)
    present = sorted(set(codes.tolist()), key=lambda c: (c < 0, c))
    return {names.get(c, f"code {c}"): codes == c for c in present}


def full_metrics(
    preds: Predictions, gender: np.ndarray | None = None, race: np.ndarray | None = None
) -> dict:
    """:func:`prediction_metrics` for the whole set plus ``by_gender`` and ``by_race`` breakdowns.

    ``gender`` and ``race``: ``(N,)`` UTKFace codes aligned with ``preds`` (``-1`` unknown). Every group
    with at least one sample gets the same metric groups (an AUC may be ``None`` in a small group).
    """
    out = prediction_metrics(preds)
    for key, codes, names in (("by_gender", gender, GENDER_NAMES), ("by_race", race, RACE_NAMES)):
        if codes is None:
            continue
        codes = np.asarray(codes)
        if len(codes) != len(preds):
            raise ValueError(f"{key}: {len(codes)} group codes for {len(preds)} predictions")
        out[key] = {
            name: prediction_metrics(_subset(preds, mask)) for name, mask in group_names(codes, names).items()
        }
    return json_safe(out)


# ---- the minor/adult check -----------------------------------------------------------------------------
AGE_BAND_EDGES = (0, 13, 18, 21, 26, 36, 56)
"""First ages of the bands the minor/adult rates are broken down by (the adult age is added as an edge)."""


def age_bands(adult_age: int) -> list[tuple[str, int, int]]:
    """``(name, first age, last age + 1)`` per band of :data:`AGE_BAND_EDGES` plus ``adult_age``:
    ``age_bands(18)[1]`` → ``("13-17", 13, 18)``; the last band is open (``"56+"``)."""
    edges = sorted(set(AGE_BAND_EDGES) | {int(adult_age)})
    bands = []
    for lo, hi in zip(edges, edges[1:] + [10_000], strict=True):
        name = f"{lo}+" if hi == 10_000 else str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}"
        bands.append((name, lo, hi))
    return bands


def age_gate_rates(age_true: np.ndarray, decision: np.ndarray, adult_age: int) -> dict:
    """The check's error rates for ``(N,)`` true ages and ``(N,)`` decisions (``adult``/``minor``/``unsure``):
    ``minors_passed_as_adults`` (share of the faces under ``adult_age`` decided adult),
    ``adults_held_as_minors`` (share of the others decided minor), ``unsure`` (share of all faces), and the
    share of each decision; a share of no faces is ``None``."""
    age_true, decision = np.asarray(age_true), np.asarray(decision)
    minor = age_true < adult_age

    def share(mask: np.ndarray, value: str) -> float | None:
        return float(np.mean(decision[mask] == value)) if mask.any() else None

    everyone = np.ones(len(age_true), bool)
    return {"n": int(len(age_true)), "n_minors": int(minor.sum()), "n_adults": int((~minor).sum()),
            "minors_passed_as_adults": share(minor, "adult"), "adults_held_as_minors": share(~minor, "minor"),
            "unsure": share(everyone, "unsure"), "decided_adult": share(everyone, "adult"),
            "decided_minor": share(everyone, "minor")}


def age_gate_metrics(age_true: np.ndarray, p_adult: np.ndarray, gate: AgeGate, gender: np.ndarray | None = None,
                     race: np.ndarray | None = None) -> dict:
    """:func:`age_gate_rates` of ``gate``'s decisions on ``(N,)`` ``p_adult`` (``P(age >= gate.adult_age)``),
    overall and ``by_gender``, ``by_race`` (UTKFace codes, ``(N,)``) and ``by_age_band`` (:func:`age_bands`),
    plus the threshold-free ranking quality of "minor" (score ``1 - p_adult``): ``minor_roc_auc`` and
    ``minor_average_precision`` (area under the precision-recall curve), and the ``operating_point``."""
    age_true, p = np.asarray(age_true), np.asarray(p_adult, np.float64)
    decision = gate.decide(p)
    minor = age_true < gate.adult_age
    out = age_gate_rates(age_true, decision, gate.adult_age)
    both = bool(minor.any() and (~minor).any())
    out["minor_roc_auc"] = float(roc_auc_score(minor, 1 - p)) if both else None
    out["minor_average_precision"] = float(average_precision_score(minor, 1 - p)) if both else None
    out["operating_point"] = gate.to_dict()
    for key, codes, names in (("by_gender", gender, GENDER_NAMES), ("by_race", race, RACE_NAMES)):
        if codes is not None:
            out[key] = {name: age_gate_rates(age_true[mask], decision[mask], gate.adult_age)
                        for name, mask in group_names(np.asarray(codes), names).items()}
    out["by_age_band"] = {}
    for name, lo, hi in age_bands(gate.adult_age):
        mask = (age_true >= lo) & (age_true < hi)
        if mask.any():
            out["by_age_band"][name] = age_gate_rates(age_true[mask], decision[mask], gate.adult_age)
    return json_safe(out)
