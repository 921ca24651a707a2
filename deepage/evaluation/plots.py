"""Evaluation plots (PNG, matplotlib's non-interactive Agg backend): confusion matrices, ROC curves,
per-class recall, age error against true age, reliability diagrams, and the leaderboard bar chart.

Each function draws one figure from plain arrays or metric dictionaries, writes it to ``path`` and returns
the path, so the same plots can be made from a saved ``metrics.json`` and ``predictions.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
    precision_recall_curve,
    roc_curve,
)

from ..answers import AgeGate  # noqa: E402
from ..labels import get_scheme  # noqa: E402
from .metrics import reliability_bins  # noqa: E402
from .predictions import Predictions  # noqa: E402

__all__ = [
    "plot_confusion_matrix",
    "plot_roc_curves",
    "plot_per_class_recall",
    "plot_age_error",
    "plot_reliability",
    "plot_leaderboard",
    "plot_minor_curves",
    "make_plots",
]

_DPI = 120


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str = "Confusion matrix"
) -> Path:
    """``(C, C)`` counts (rows: true class) drawn row-normalised (colour and percentage) with the count."""
    cm = np.asarray(cm, float)
    C = len(class_names)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = max(4.5, 0.55 * C + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    # scikit-learn draws the matrix and its ticks; its one-number cell text cannot show "percent\ncount" and
    # leave empty cells blank, so the cells are written here.
    display = ConfusionMatrixDisplay(norm, display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", include_values=False, colorbar=False, im_kw={"vmin": 0, "vmax": 1})
    fig.colorbar(display.im_, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    small = 7 if C > 10 else 8
    for i, j in zip(*np.nonzero(cm), strict=True):
        ax.text(j, i, f"{norm[i, j]:.0%}\n{int(cm[i, j])}", ha="center", va="center", fontsize=small,
                color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(C), class_names, rotation=45, ha="right")
    ax.set_yticks(range(C), [f"{n} ({int(r)})" for n, r in zip(class_names, rows[:, 0], strict=True)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (images)")
    ax.set_title(title)
    return _save(fig, path)


def plot_roc_curves(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    aucs: Sequence[float | None] | None = None,
    title: str = "ROC curves (one vs rest)",
) -> Path:
    """One-vs-rest ROC curve per class; ``y_true`` ``(N,)`` indices, ``probs`` ``(N, C)``. Classes without
    positives (or negatives) have no curve and are named in the legend as such."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, float)
    C = len(class_names)
    cmap = plt.get_cmap("viridis" if C > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    for c, name in enumerate(class_names):
        positive = y_true == c
        colour = cmap(c / max(1, C - 1)) if C > 10 else cmap(c % 10)
        if positive.all() or not positive.any():
            ax.plot(
                [],
                [],
                color=colour,
                label=f"{name}: no curve (no {'negatives' if positive.all() else 'positives'})",
            )
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        auc = aucs[c] if aucs is not None else None
        # The AUC goes into the name: the display's own label rounds it to two decimals.
        label = f"{name}" + (f" (AUC {auc:.3f})" if auc is not None else "")
        curve = RocCurveDisplay(fpr=fpr, tpr=tpr, name=label).plot(ax=ax)
        curve.line_.set(color=colour, lw=1.3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right", ncol=2 if C > 8 else 1)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_per_class_recall(
    per_class: dict,
    class_names: Sequence[str],
    path: str | Path,
    accuracy: float | None = None,
    title: str = "Recall per class",
) -> Path:
    """Bars of recall per class (from :func:`classification_metrics`'s ``per_class``), support above each."""
    recall = [per_class[n]["recall"] for n in class_names]
    support = [per_class[n]["support"] for n in class_names]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(class_names) + 2), 4))
    x = np.arange(len(class_names))
    ax.bar(x, [r if r is not None else 0 for r in recall], color="#3b75af")
    for i, (r, s) in enumerate(zip(recall, support, strict=True)):
        ax.text(i, (r or 0) + 0.01, f"n={s}", ha="center", va="bottom", fontsize=7)
    if accuracy is not None:
        ax.axhline(accuracy, color="#d62728", ls="--", lw=1, label=f"accuracy {accuracy:.1%}")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xticks(x, class_names, rotation=45, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("recall")
    ax.set_xlabel("true class")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_age_error(age_true: np.ndarray, age_pred: np.ndarray, path: str | Path, bin_width: int = 5,
                   title: str = "Age error against true age") -> Path:
    """Top: MAE per ``bin_width``-year bin of true age (with image counts). Bottom: signed error
    (predicted - true, years) of every image against its true age."""
    age_true = np.asarray(age_true, float)
    err = np.asarray(age_pred, float) - age_true
    top = int(max(age_true.max(initial=0), 0) // bin_width + 1) * bin_width
    edges = np.arange(0, top + bin_width, bin_width)
    which = np.clip(np.digitize(age_true, edges) - 1, 0, len(edges) - 2)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
    centres, maes, counts = [], [], []
    for b in range(len(edges) - 1):
        sel = which == b
        if sel.any():
            centres.append(edges[b] + bin_width / 2)
            maes.append(float(np.abs(err[sel]).mean()))
            counts.append(int(sel.sum()))
    ax1.bar(centres, maes, width=bin_width * 0.9, color="#3b75af")
    for c, m, n in zip(centres, maes, counts, strict=True):
        ax1.text(c, m, str(n), ha="center", va="bottom", fontsize=6)
    ax1.axhline(
        np.abs(err).mean(), color="#d62728", ls="--", lw=1, label=f"overall MAE {np.abs(err).mean():.2f}"
    )
    ax1.set_ylabel(f"MAE per {bin_width}-year bin")
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", alpha=0.3)
    ax1.set_title(title + " (numbers: images per bin)")
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(age_true))  # ages are integers: spread them
    ax2.scatter(age_true + jitter, err, s=4, alpha=0.35, color="#333333", linewidths=0)
    ax2.axhline(0, color="#d62728", lw=1)
    ax2.set_xlabel("true age (years)")
    ax2.set_ylabel("predicted - true (years)")
    ax2.grid(alpha=0.3)
    return _save(fig, path)


def plot_reliability(y_true: np.ndarray, probs: np.ndarray, path: str | Path, n_bins: int = 10,
                     ece: float | None = None, title: str = "Reliability of the top class") -> Path:
    """Accuracy against mean confidence of the top class per confidence bin, with the ECE, and a
    histogram of confidences below."""
    bins = reliability_bins(y_true, probs, n_bins)
    edges = np.asarray(bins["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    acc = np.array([a if a is not None else np.nan for a in bins["accuracy"]])
    conf = np.array([c if c is not None else np.nan for c in bins["confidence"]])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(5.5, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="perfect calibration")
    ax1.bar(
        centres, np.nan_to_num(acc), width=1 / n_bins * 0.95, color="#3b75af", alpha=0.8, label="accuracy"
    )
    ax1.plot(conf, acc, "o", color="#d62728", ms=4, label="(mean confidence, accuracy)")
    label = title + (f"\nECE {ece:.3f}" if ece is not None else "")
    ax1.set_title(label)
    ax1.set_ylabel("accuracy")
    ax1.set_ylim(0, 1)
    ax1.legend(fontsize=8, loc="best")
    ax1.grid(alpha=0.3)
    ax2.bar(centres, bins["count"], width=1 / n_bins * 0.95, color="#888888")
    ax2.set_xlabel("confidence of the top class")
    ax2.set_ylabel("images")
    ax2.set_xlim(0, 1)
    return _save(fig, path)


def plot_leaderboard(
    labels: Sequence[str],
    acc14: Sequence[float | None],
    acc8: Sequence[float | None],
    mae: Sequence[float | None],
    path: str | Path,
) -> Path:
    """Grouped bars of 14- and 8-class accuracy per run (left) and MAE (right); missing values are gaps."""
    n = len(labels)
    y = np.arange(n)
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(11, max(2.5, 0.5 * n + 1.5)), sharey=True, gridspec_kw={"width_ratios": [2, 1]}
    )

    def vals(seq: Sequence[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in seq], float)

    a14, a8, m = vals(acc14), vals(acc8), vals(mae)
    ax1.barh(y - 0.2, np.nan_to_num(a14), height=0.4, color="#3b75af", label="14-class accuracy")
    ax1.barh(y + 0.2, np.nan_to_num(a8), height=0.4, color="#9ecae1", label="8-class accuracy")
    for i in range(n):
        for off, v in ((-0.2, a14[i]), (0.2, a8[i])):
            ax1.text(
                (0 if np.isnan(v) else v) + 0.005,
                i + off,
                "—" if np.isnan(v) else f"{v:.1%}",
                va="center",
                fontsize=7,
            )
    ax1.set_xlim(0, 1.1)
    ax1.set_yticks(y, labels)
    ax1.invert_yaxis()
    ax1.set_xlabel("accuracy")
    ax1.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    ax1.grid(axis="x", alpha=0.3)
    ax2.barh(y, np.nan_to_num(m), height=0.5, color="#e6550d")
    for i, v in enumerate(m):
        ax2.text(
            (0 if np.isnan(v) else v) + 0.05, i, "—" if np.isnan(v) else f"{v:.2f}", va="center", fontsize=7
        )
    ax2.set_xlim(0, 1.2 * np.nanmax(m) if np.isfinite(m).any() else 1)
    ax2.set_xlabel("MAE (years, lower is better)")
    ax2.grid(axis="x", alpha=0.3)
    fig.suptitle("Leaderboard (sorted by 14-class accuracy)", y=1.02)
    return _save(fig, path)


def plot_minor_curves(age_true: np.ndarray, p_adult: np.ndarray, gate: AgeGate, path: str | Path,
                      title: str | None = None) -> Path:
    """ROC (left) and precision-recall curve (right) of "minor" (true age under ``gate.adult_age``, score
    ``1 - p_adult``) over ``(N,)`` arrays, with the operating point's two decisions marked: ``minor``
    (below the minor threshold) and "not adult" (``minor`` or ``unsure``)."""
    age_true, p = np.asarray(age_true), np.asarray(p_adult, float)
    minor = age_true < gate.adult_age
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5))
    if not (minor.any() and (~minor).any()):
        for ax in (ax1, ax2):
            ax.text(0.5, 0.5, "no curve: needs minors and adults", ha="center", va="center")
    else:
        fpr, tpr, _ = roc_curve(minor, 1 - p)
        RocCurveDisplay(fpr=fpr, tpr=tpr, name=f"minor (AUC {np.trapezoid(tpr, fpr):.3f})").plot(ax=ax1)
        precision, recall, _ = precision_recall_curve(minor, 1 - p)
        PrecisionRecallDisplay(precision=precision, recall=recall, name="minor").plot(ax=ax2)
        ax1.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        decision = gate.decide(p)
        for label, said, colour in (("decided minor", decision == "minor", "#d62728"),
                                    ("not decided adult", decision != "adult", "#ff7f0e")):
            hit = float(np.mean(said[minor]))  # recall = true positive rate
            ax1.plot(float(np.mean(said[~minor])), hit, "o", color=colour, label=label)
            if said.any():
                ax2.plot(hit, float(np.mean(minor[said])), "o", color=colour, label=label)
        ax1.legend(fontsize=8, loc="lower right")
        ax2.legend(fontsize=8, loc="lower left")
    ax1.set_xlabel("adults called minor (false positive rate)")
    ax1.set_ylabel("minors called minor (true positive rate)")
    ax2.set_xlabel("recall of minors")
    ax2.set_ylabel("precision")
    for ax in (ax1, ax2):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"'minor' (under {gate.adult_age}) against adult: {int(minor.sum())} minors, "
                 f"{int((~minor).sum())} adults")
    return _save(fig, path)


def make_plots(preds: Predictions, metrics: dict, out_dir: str | Path) -> list[Path]:
    """Every evaluation plot ``preds`` allows, into ``out_dir``; returns the written paths.

    Per class scheme: ``confusion_<scheme>.png``, ``roc_<scheme>.png``, ``recall_<scheme>.png``,
    ``reliability_<scheme>.png``; for age heads: ``age_error.png``.
    """
    out_dir = Path(out_dir)
    written = []
    for name, probs in preds.class_probs.items():
        m = metrics[name]
        names = m["class_names"]
        y_true = np.asarray(get_scheme(name).classify(np.asarray(preds.age_true)))
        label = f"{name} ({len(names)} classes, n={len(y_true)})"
        macro = f", macro AUC {m['macro_auc']:.3f}" if m["macro_auc"] is not None else ""
        written += [
            plot_confusion_matrix(m["confusion_matrix"], names, out_dir / f"confusion_{name}.png",
                                  title=f"Confusion matrix, {label}"),
            plot_roc_curves(y_true, probs, names, out_dir / f"roc_{name}.png",
                            aucs=[m["per_class"][n]["auc"] for n in names], title=f"ROC one vs rest, {label}{macro}"),
            plot_per_class_recall(m["per_class"], names, out_dir / f"recall_{name}.png", accuracy=m["accuracy"],
                                  title=f"Recall per class, {label}"),
            plot_reliability(y_true, probs, out_dir / f"reliability_{name}.png", ece=m["ece"],
                             title=f"Reliability, {label}"),
        ]
    if preds.age_pred is not None:
        written.append(plot_age_error(preds.age_true, preds.age_pred, out_dir / "age_error.png",
                                      title=f"Age error against true age (n={len(preds)})"))
    return written
