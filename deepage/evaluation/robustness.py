"""Robustness: a checkpoint scored on one split as stored and under each named degradation
(``deepage evaluate … --degrade noise,grey,blur=2``; see :mod:`deepage.degradations`).

For each condition: MAE, CS@5, 14- and 8-class accuracy, and the mean *signed* error overall and by age band
(a shift such as "everyone looks older in grey photos" shows there, where the MAE only grows). Written as
``degraded.json`` and ``degraded.md`` in the evaluation folder.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..data.loader import FaceBatches, FaceData, load_split
from ..degradations import DEFAULT_DEGRADATIONS, degrade, parse_degradations
from .evaluate import load_for_evaluation
from .metrics import core_metrics, json_safe
from .predictions import Predictions, collect_predictions

__all__ = ["evaluate_degraded", "AGE_BANDS", "degraded_table"]

AGE_BANDS = ((0, 12), (13, 17), (18, 30), (31, 69), (70, 200))
"""Inclusive age bands of the signed-error breakdown (children, minors, young adults, adults, the old)."""


def _condition_metrics(preds: Predictions) -> dict:
    core = core_metrics(preds)
    error = preds.age_pred - preds.age_true
    bands = {}
    for low, high in AGE_BANDS:
        mask = (preds.age_true >= low) & (preds.age_true <= high)
        label = f"{low}-{high}" if high < 200 else f"{low}+"
        bands[label] = {"n": int(mask.sum()), "mean_signed_error": float(error[mask].mean()) if mask.any() else None}
    return {"mae": core["age"]["mae"], "cs5": core["age"]["cs5"], "utk14_accuracy": core["utk14"]["accuracy"],
            "utk8_accuracy": core["utk8"]["accuracy"], "mean_signed_error": float(error.mean()),
            "signed_error_by_age": bands}


def evaluate_degraded(checkpoint: str | Path, data: str | Path, split: str = "val",
                      degradations: str = DEFAULT_DEGRADATIONS, out_dir: str | Path | None = None,
                      batch_size: int = 128, tta_flip: bool = False, seed: int = 0,
                      device: str | torch.device = "cpu") -> dict:
    """Metrics of ``checkpoint`` on ``split`` of ``data``, clean and under each of ``degradations``
    (:func:`~deepage.degradations.parse_degradations`), each image degraded deterministically from ``seed``.

    Returns ``{"split", "n", "seed", "conditions": {"clean": {...}, "noise=12": {...}, ...}}`` and, with
    ``out_dir``, writes it as ``degraded.json`` and a table as ``degraded.md``."""
    conditions = parse_degradations(degradations)
    model, _ = load_for_evaluation(Path(checkpoint))
    model = model.to(device)
    if model.spec.head == "classes":
        raise ValueError(f"{checkpoint}: --degrade needs an age head (dex or coral), not 'classes'")
    clean = load_split(data, split)
    if clean.images is None:
        raise ValueError(f"{data}: split {split!r} does not fit in memory; --degrade needs it there")
    results = {}
    for label, images in [("clean", clean.images)] + [
            (f"{name}={strength:g}", torch.from_numpy(degrade(clean.images, name, strength, seed)))
            for name, strength in conditions]:
        face_data: FaceData = replace(clean, images=images)
        batches = FaceBatches(face_data, model.spec.preprocessing, batch_size)
        results[label] = _condition_metrics(collect_predictions(model, batches, device, tta_flip=tta_flip))
    report = {"checkpoint": str(checkpoint), "data": str(data), "split": split, "n": len(clean), "seed": seed,
              "tta_flip": tta_flip, "conditions": results}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "degraded.json").write_text(json.dumps(json_safe(report), indent=1))
        (out / "degraded.md").write_text(degraded_table(report))
    return report


def degraded_table(report: dict) -> str:
    """A Markdown table of :func:`evaluate_degraded`'s report: one row per condition."""
    bands = list(next(iter(report["conditions"].values()))["signed_error_by_age"])
    lines = [f"Split '{report['split']}' ({report['n']} images), degradations seeded with {report['seed']}.", "",
             "| condition | MAE | CS@5 | 14 classes | 8 classes | mean signed error | "
             + " | ".join(f"signed {b}" for b in bands) + " |",
             "|---" * (6 + len(bands)) + "|"]
    for label, m in report["conditions"].items():
        signed = [m["signed_error_by_age"][b]["mean_signed_error"] for b in bands]
        lines.append(f"| {label} | {m['mae']:.2f} | {100 * m['cs5']:.1f} % | {100 * m['utk14_accuracy']:.1f} % | "
                     f"{100 * m['utk8_accuracy']:.1f} % | {m['mean_signed_error']:+.2f} | "
                     + " | ".join("–" if v is None else f"{v:+.2f}" for v in signed) + " |")
    return "\n".join(lines) + "\n"
