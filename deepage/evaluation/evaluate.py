"""Evaluate a checkpoint on one split of an ingested HDF5 file: metrics, plots and a report.

``evaluate_checkpoint`` writes into its output folder (default ``<checkpoint folder>/eval-<split>/``):

* ``metrics.json``: :func:`~deepage.evaluation.metrics.full_metrics` plus ``n``, the split, both split
  fingerprints, the inference speed, the model spec and any warnings;
* ``predictions.csv``: one row per image (position, HDF5 row, true age, gender, race, predictions);
* the PNG plots of :func:`~deepage.evaluation.plots.make_plots` and ``report.md``.

With ``adult_age`` the minor/adult check at the operating point stored in the checkpoint (``deepage
calibrate``) is scored too: ``metrics.json`` gains ``minors_passed_as_adults``, ``adults_held_as_minors``,
``unsure`` and an ``age_gate`` section (by gender, race and age band), and ``minor_<age>.png`` the ROC and
precision-recall curves of "minor".
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..answers import AgeGate, check_adult_age, p_at_least
from ..checkpoint import load_checkpoint, model_from_checkpoint, read_age_gates
from ..data.h5file import open_h5
from ..data.loader import FaceBatches, FaceData, load_split
from ..data.split import read_split
from ..models.registry import AgeModel
from ..preprocessing import Preprocessing
from .metrics import age_gate_metrics, full_metrics, json_safe
from .plots import make_plots, plot_minor_curves
from .predictions import Predictions, collect_predictions
from .report import fmt_num, fmt_pct, headline, write_report

__all__ = ["EvaluationResult", "evaluate_checkpoint", "write_predictions_csv", "stored_age_gate"]


@dataclass
class EvaluationResult:
    """What :func:`evaluate_checkpoint` computed and where it wrote it."""

    metrics: dict
    out_dir: Path
    checkpoint: Path
    split: str
    plots: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary_text(self) -> str:
        """A few lines for the terminal: headline numbers, speed, warnings and the output folder."""
        m = self.metrics
        lines = [f"evaluated {self.checkpoint} on split '{self.split}' ({m['n']} images): {headline(m)}"]
        for s in ("utk14", "utk8"):
            if s in m:
                lines.append(
                    f"  {s}: balanced accuracy {fmt_pct(m[s]['balanced_accuracy'])}, one-off "
                    f"{fmt_pct(m[s]['one_off'])}, macro F1 {fmt_num(m[s]['macro_f1'], 3)}, "
                    f"macro AUC {fmt_num(m[s]['macro_auc'], 3)}"
                )
        if "age_gate" in m:
            g = m["age_gate"]
            lines.append(f"  adult age {g['operating_point']['adult_age']}: minors passed as adults "
                         f"{fmt_pct(g['minors_passed_as_adults'])}, adults held as minors "
                         f"{fmt_pct(g['adults_held_as_minors'])}, unsure {fmt_pct(g['unsure'])}")
        lines.append(
            f"  inference {fmt_num(m['speed']['images_per_second'], 1)} images/s on {m['speed']['device']}"
        )
        lines += [f"  warning: {w}" for w in self.warnings]
        lines.append(
            f"wrote metrics.json, predictions.csv, report.md and {len(self.plots)} plots to {self.out_dir}"
        )
        return "\n".join(lines)


def _has_saved_split(path: Path) -> bool:
    with open_h5(path) as f:
        assignment, _ = read_split(f)
    return assignment is not None


def write_predictions_csv(
    path: str | Path, preds: Predictions, rows: np.ndarray, gender: np.ndarray, race: np.ndarray
) -> Path:
    """One row per image: ``position,row,age_true,gender,race[,age_pred][,pred_<scheme>,conf_<scheme>]...``.

    ``rows``, ``gender`` and ``race`` are ``(N,)`` arrays aligned with ``preds`` (position order).
    """
    path = Path(path)
    schemes = list(preds.class_probs)
    header = ["position", "row", "age_true", "gender", "race"]
    header += ["age_pred"] if preds.age_pred is not None else []
    for s in schemes:
        header += [f"pred_{s}", f"conf_{s}"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i in range(len(preds)):
            r = [int(preds.index[i]), int(rows[i]), int(preds.age_true[i]), int(gender[i]), int(race[i])]
            if preds.age_pred is not None:
                r.append(f"{float(preds.age_pred[i]):.3f}")
            for s in schemes:
                p = preds.class_probs[s][i]
                r += [int(p.argmax()), f"{float(p.max()):.4f}"]
            w.writerow(r)
    return path


def _split_warnings(face_data: FaceData, data: Path, split: str, ckpt: dict, pre: Preprocessing) -> list[str]:
    """Possible leakage (split fingerprints differ), training images, another stored image size."""
    warn = []
    ckpt_fp = str(ckpt.get("split_fingerprint", "unknown"))
    if face_data.fingerprint != ckpt_fp:
        warn.append(
            f"the data's split fingerprint ({face_data.fingerprint}) differs from the checkpoint's "
            f"({ckpt_fp}): the model may have been trained on some of these images (possible leakage)"
        )
    elif split in ("train", "all"):
        warn.append(
            f"split '{split}' contains the images the model was trained on: these are not held-out numbers"
        )
    if pre.stored_size != face_data.stored_size:
        warn.append(
            f"the model was trained on images stored at {pre.stored_size} px but {data} stores "
            f"{face_data.stored_size} px"
        )
    return warn


def _timed_predictions(model: AgeModel, face_data: FaceData, batch_size: int, dev: torch.device,
                       tta_flip: bool) -> tuple[Predictions, float]:
    """Predictions for every image of ``face_data`` (in order, none dropped) and the seconds they took."""
    model.to(dev)
    batches = FaceBatches(face_data, model.spec.preprocessing, batch_size, shuffle=False, drop_last=False)
    start = time.perf_counter()
    preds = collect_predictions(model, batches, dev, tta_flip=tta_flip)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    if len(preds) != len(face_data):
        raise RuntimeError(f"evaluated {len(preds)} images of a split of {len(face_data)}")
    return preds, seconds


def _provenance(checkpoint: Path, data: Path, split: str, requested: str, face_data: FaceData, ckpt: dict,
                speed: dict, warn: list[str]) -> dict:
    """What was evaluated, with what, how fast: the fields ``metrics.json`` adds to the metrics."""
    spec = ckpt["spec"]
    ckpt_fp = str(ckpt.get("split_fingerprint", "unknown"))
    return {
        "checkpoint": str(checkpoint.resolve()),
        "data": str(data.resolve()),
        "split": split,
        "split_requested": requested,
        "fingerprints": {"data": face_data.fingerprint, "checkpoint": ckpt_fp,
                         "match": face_data.fingerprint == ckpt_fp},
        "speed": speed,
        "model": {"name": spec.get("name"), "head": spec.get("head"), "scheme": spec.get("scheme"),
                  "input_size": spec["preprocessing"]["input_size"]},
        "checkpoint_metrics": ckpt.get("metrics", {}),
        "warnings": warn,
    }


def load_for_evaluation(path: Path) -> tuple[AgeModel, dict]:
    """The model to score and its checkpoint (or, for an ``.onnx`` file from ``deepage export``, float or
    int8, a checkpoint-like record of its metadata: what ships is scored as it answers)."""
    if path.suffix.lower() == ".onnx":
        from ..inference.export import onnx_model_and_record

        return onnx_model_and_record(path)
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt, name=path), ckpt


def stored_age_gate(ckpt: dict, checkpoint: Path, adult_age: int) -> AgeGate:
    """The operating point for ``adult_age`` stored in ``ckpt``, or a ``ValueError`` saying how to make one."""
    adult_age = check_adult_age(adult_age)
    gates = read_age_gates(ckpt, checkpoint)
    if adult_age not in gates:
        have = ", ".join(map(str, sorted(gates))) or "none"
        raise ValueError(f"{checkpoint} has no operating point for adult age {adult_age} (stored: {have}): "
                         f"choose one on the validation split first: deepage calibrate {checkpoint} --data "
                         f"DATA.h5 --split val --adult-age {adult_age}")
    return gates[adult_age]


def _age_gate_part(gate: AgeGate, preds: Predictions, gender: np.ndarray, race: np.ndarray, tta_flip: bool,
                   warn: list[str]) -> tuple[dict, np.ndarray]:
    """The ``age_gate`` metrics of ``preds`` at ``gate`` and the ``(N,)`` ``P(age >= adult age)``."""
    if preds.age_probs is None:
        raise ValueError("the minor/adult check needs a head with an age distribution (dex or coral)")
    if gate.tta_flip != tta_flip:
        warn.append(f"the operating point for adult age {gate.adult_age} was chosen with flip TTA "
                    f"{'on' if gate.tta_flip else 'off'}, this evaluation has it {'on' if tta_flip else 'off'}")
    p_adult = p_at_least(preds.age_probs, gate.adult_age)
    return age_gate_metrics(preds.age_true, p_adult, gate, gender=gender, race=race), p_adult


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    batch_size: int = 128,
    tta_flip: bool = False,
    device: str | torch.device | None = None,
    plots: bool = True,
    adult_age: int | None = None,
) -> EvaluationResult:
    """Evaluate ``checkpoint`` on ``split`` (``train``, ``val``, ``test`` or ``all``) of ingested ``data``.

    Every image of the split is visited once (no shuffling, the last partial batch kept). A file without a
    saved split is evaluated whole (split ``all``), which the result says. The split fingerprint of the
    data is compared with the checkpoint's; a mismatch is reported as possible leakage. ``device``:
    ``"cuda"`` when available unless given. ``plots=False`` skips the PNGs (about half a second each).
    ``adult_age``: also score the minor/adult check at the checkpoint's stored operating point for that age
    (``ValueError`` when it has none).
    """
    checkpoint, data = Path(checkpoint), Path(data)
    if not data.is_file():
        raise FileNotFoundError(f"data file {data} not found")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model, ckpt = load_for_evaluation(checkpoint)
    gate = None if adult_age is None else stored_age_gate(ckpt, checkpoint, adult_age)
    warn: list[str] = []
    requested = split
    if split != "all" and not _has_saved_split(data):
        warn.append(f"{data} has no saved split: evaluated all of its images instead of split '{split}'")
        split = "all"
    face_data = load_split(data, split)
    if len(face_data) == 0:
        raise ValueError(f"split '{split}' of {data} holds no images")
    warn += _split_warnings(face_data, data, split, ckpt, model.spec.preprocessing)
    if gate is not None and (gate.split, gate.data_fingerprint) == (split, face_data.fingerprint):
        warn.append(f"split '{split}' is the one the operating point for adult age {gate.adult_age} was chosen "
                    "on: its rates meet the targets by construction; the test split's are the honest ones")

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preds, seconds = _timed_predictions(model, face_data, batch_size, dev, tta_flip)
    order = np.asarray(preds.index)
    gender, race = face_data.gender.numpy()[order], face_data.race.numpy()[order]
    metrics = full_metrics(preds, gender=gender, race=race)
    if gate is not None:
        metrics["age_gate"], p_adult = _age_gate_part(gate, preds, gender, race, tta_flip, warn)
        metrics.update({k: metrics["age_gate"][k] for k in ("minors_passed_as_adults", "adults_held_as_minors",
                                                           "unsure")})
    speed = {"images_per_second": len(preds) / seconds if seconds > 0 else None, "seconds": seconds,
             "batch_size": batch_size, "device": str(dev), "threads": torch.get_num_threads(), "tta_flip": tta_flip}
    metrics.update(json_safe(_provenance(checkpoint, data, split, requested, face_data, ckpt, speed, warn)))

    out = Path(out_dir) if out_dir is not None else checkpoint.parent / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False))
    write_predictions_csv(out / "predictions.csv", preds, face_data.rows[order], gender, race)
    written = make_plots(preds, metrics, out) if plots else []
    if plots and gate is not None:
        written.append(plot_minor_curves(preds.age_true, p_adult, gate, out / f"minor_{gate.adult_age}.png"))
    write_report(metrics, out, written)
    return EvaluationResult(
        metrics=metrics, out_dir=out, checkpoint=checkpoint, split=split, plots=written, warnings=warn
    )
