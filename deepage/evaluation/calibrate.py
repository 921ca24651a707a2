"""``deepage calibrate``: choose the minor/adult check's operating point on a split and store it in the checkpoint.

The model's age distribution gives each face ``P(age >= A)`` (:func:`deepage.answers.p_at_least`); the two
thresholds that turn it into ``adult`` / ``minor`` / ``unsure`` are chosen once, on the validation split, by
:func:`deepage.answers.choose_age_gate`, and written into the checkpoint under ``age_gates`` (atomically, the
rest of the file unchanged), so every later ``predict``, ``serve`` and ``export`` uses the same ones:

    deepage calibrate runs/NAME/best.pt --data work/utk128.h5 --split val --adult-age 18
    deepage evaluate runs/NAME/best.pt --data work/utk128.h5 --split test --adult-age 18   # the honest rates

``--temperature`` first fits the DEX head's temperature on the same split (:func:`fit_temperature`: the
one that gives the true ages the highest likelihood), so that the 10-90 % interval holds about 80 % of the
faces; it goes into the spec's ``head_kwargs``, and every operating point stored with the model is chosen
again on the tempered distributions (a point chosen before would no longer hold its rates).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..answers import (
    DEFAULT_MAX_ADULTS_HELD,
    DEFAULT_MAX_MINORS_PASSED,
    AgeGate,
    check_adult_age,
    choose_age_gate,
    p_at_least,
)
from ..checkpoint import AGE_GATES_KEY, save_checkpoint, weights_digest
from ..data.loader import load_split
from ..models.heads import INTERVAL_QUANTILES, age_quantiles
from .evaluate import _has_saved_split, _timed_predictions, load_for_evaluation
from .report import fmt_pct

__all__ = ["CalibrationResult", "calibrate_checkpoint", "fit_temperature", "temper", "interval_coverage"]

TEMPERATURE_BOUNDS = (0.25, 4.0)
"""The range :func:`fit_temperature` searches: wide of any temperature a trained DEX model needs."""


def temper(age_probs: np.ndarray, t: float) -> np.ndarray:
    """``(N, A)`` distributions ``p`` → ``softmax(log p / t)``: what a DEX head at ``t`` times its
    temperature would give (``log p`` is its logits divided by the temperature, up to a constant)."""
    z = np.log(np.maximum(np.asarray(age_probs, np.float64), 1e-12)) / t
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def fit_temperature(age_true: np.ndarray, age_probs: np.ndarray) -> float:
    """The factor ``t`` in :data:`TEMPERATURE_BOUNDS` whose :func:`temper` gives the true ages ``(N,)``
    (whole years, clipped to the distribution's ages) the lowest mean negative log-likelihood under the
    ``(N, A)`` distributions: temperature scaling (Guo et al., 2017) over the ages."""
    from scipy.optimize import minimize_scalar

    probs = np.asarray(age_probs, np.float64)
    rows = np.arange(len(probs))
    ages = np.clip(np.rint(np.asarray(age_true, np.float64)).astype(int), 0, probs.shape[1] - 1)

    def nll(t: float) -> float:
        return float(-np.log(np.maximum(temper(probs, t)[rows, ages], 1e-300)).mean())

    found = minimize_scalar(nll, bounds=TEMPERATURE_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(found.x)


def interval_coverage(age_true: np.ndarray, age_probs: np.ndarray) -> tuple[float, float]:
    """(share of true ages inside the :data:`INTERVAL_QUANTILES` interval, its mean width in years)."""
    low, high = (age_quantiles(age_probs, q) for q in INTERVAL_QUANTILES)
    y = np.asarray(age_true, np.float64)
    return float(np.mean((y >= low) & (y <= high))), float(np.mean(high - low))


@dataclass
class CalibrationResult:
    """The operating point :func:`calibrate_checkpoint` chose and the file it was written to."""

    gate: AgeGate
    path: Path
    warnings: list[str] = field(default_factory=list)
    temperature: dict | None = None  # --temperature: {"before", "after", "coverage_before", ...}
    regated: list[int] = field(default_factory=list)  # other adult ages whose points were chosen again

    def summary_text(self) -> str:
        g = self.gate
        lines = []
        if self.temperature is not None:
            t = self.temperature
            lines.append(f"temperature {t['before']:.4f} -> {t['after']:.4f}: the {_interval_name()} interval held "
                         f"{fmt_pct(t['coverage_before'])} of the faces (mean width {t['width_before']:.1f} years), "
                         f"now {fmt_pct(t['coverage_after'])} ({t['width_after']:.1f} years)")
        if self.regated:
            lines.append("chosen again on the tempered distributions: the operating points for adult age "
                         + ", ".join(str(a) for a in self.regated))
        lines += [f"adult age {g.adult_age}, chosen on split '{g.split}' of {g.data} ({g.n_minors} minors, "
                 f"{g.n_adults} adults): adult when P(age >= {g.adult_age}) > {g.adult_threshold:.4f}, minor when "
                 f"< {g.minor_threshold:.4f}" + (" (the targets cross: one threshold, no unsure band)" if g.crossed
                                                 else ", unsure between"),
                 f"  there: minors passed as adults {fmt_pct(g.minors_passed)} (target <= "
                 f"{fmt_pct(g.max_minors_passed)}), adults held as minors {fmt_pct(g.adults_held)} (target <= "
                 f"{fmt_pct(g.max_adults_held)}), unsure {fmt_pct(g.unsure)}"]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines.append(f"wrote the operating point into {self.path}; measure it on the test split with "
                     f"deepage evaluate {self.path} --data DATA.h5 --split test --adult-age {g.adult_age}")
        return "\n".join(lines)


def _interval_name() -> str:
    low, high = INTERVAL_QUANTILES
    return f"{round(100 * low)}-{round(100 * high)} %"


def _warnings(gate: AgeGate, split: str) -> list[str]:
    warn = []
    if gate.data_fingerprint != gate.checkpoint_fingerprint:
        warn.append(f"the data's split fingerprint ({gate.data_fingerprint}) differs from the checkpoint's "
                    f"({gate.checkpoint_fingerprint}): if the model trained on any of these images the thresholds "
                    "are too kind (fine for a data set it never saw)")
    if split in ("train", "all") and gate.data_fingerprint == gate.checkpoint_fingerprint:
        warn.append(f"split '{split}' holds the images the model was trained on: choose on 'val'")
    for who, n, rate in (("minors", gate.n_minors, gate.max_minors_passed),
                         ("adults", gate.n_adults, gate.max_adults_held)):
        if n * rate < 1:
            warn.append(f"with {n} {who} a share of {fmt_pct(rate)} allows none of them through: the threshold "
                        f"is the most extreme of {n} scores, a loose estimate of the rate")
    return warn


def calibrate_checkpoint(checkpoint: str | Path, data: str | Path, split: str = "val", adult_age: int = 18,
                         max_minors_passed: float = DEFAULT_MAX_MINORS_PASSED,
                         max_adults_held: float = DEFAULT_MAX_ADULTS_HELD, output: str | Path | None = None,
                         batch_size: int = 128, tta_flip: bool = False,
                         device: str | torch.device | None = None, temperature: bool = False) -> CalibrationResult:
    """Choose the operating point for ``adult_age`` on ``split`` of ingested ``data`` and write it into
    ``output`` (default: ``checkpoint`` itself, replaced atomically) beside any stored for other ages.

    ``split`` must be saved in ``data`` (``all``: every image, for a data set the model never trained on).
    ``tta_flip``: score with the mirror image too (then predict with ``--tta`` for the stated rates).
    ``temperature``: first fit the DEX head's temperature on the split (see the module's notes); the
    points stored for other ages are then chosen again, with their own targets.
    """
    checkpoint, data = Path(checkpoint), Path(data)
    adult_age = check_adult_age(adult_age)
    if not data.is_file():
        raise FileNotFoundError(f"data file {data} not found")
    onnx_file = checkpoint.suffix.lower() == ".onnx"  # an exported graph (int8: its own scores, its own point)
    model, ckpt = load_for_evaluation(checkpoint)
    if model.spec.head == "classes":
        raise ValueError(f"{checkpoint} has a classes head: the minor/adult check needs an age distribution "
                         "(a dex or coral head)")
    if split != "all" and not _has_saved_split(data):
        raise ValueError(f"{data} has no saved split '{split}': run deepage split, or pass --split all if the "
                         "model never trained on any of its images")
    face_data = load_split(data, split)
    if len(face_data) == 0:
        raise ValueError(f"split '{split}' of {data} holds no images")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preds, _ = _timed_predictions(model, face_data, batch_size, dev, tta_flip)
    probs, spec, tempered = preds.age_probs, dict(ckpt["spec"]), None
    if temperature:
        if model.spec.head != "dex":
            raise ValueError(f"{checkpoint} has a {model.spec.head} head: --temperature fits a DEX head's")
        before = float(model.spec.head_kwargs.get("temperature", 1.0))
        factor = fit_temperature(preds.age_true, probs)
        coverage_before, width_before = interval_coverage(preds.age_true, probs)
        probs = temper(probs, factor)
        coverage_after, width_after = interval_coverage(preds.age_true, probs)
        spec["head_kwargs"] = {**spec.get("head_kwargs", {}), "temperature": before * factor}
        tempered = {"before": before, "after": before * factor, "coverage_before": coverage_before,
                    "coverage_after": coverage_after, "width_before": width_before, "width_after": width_after,
                    "split": split, "data": data.name}
    stored = {int(a): AgeGate.from_dict(g) for a, g in (ckpt.get(AGE_GATES_KEY) or {}).items()}
    targets = {a: (g.max_minors_passed, g.max_adults_held) for a, g in stored.items()} if temperature else {}
    targets[adult_age] = (max_minors_passed, max_adults_held)
    weights = (ckpt["weights_digest"] or "") if onnx_file else weights_digest(ckpt["state_dict"])
    gates = {str(a): g.to_dict() for a, g in stored.items()}
    for age, (minors, adults) in targets.items():
        chosen = choose_age_gate(preds.age_true, p_at_least(probs, age), age, max_minors_passed=minors,
                                 max_adults_held=adults)
        gates[str(age)] = replace(chosen, split=split, data=data.name, data_fingerprint=str(face_data.fingerprint),
                                  checkpoint_fingerprint=str(ckpt.get("split_fingerprint", "unknown")),
                                  weights=weights, tta_flip=bool(tta_flip)).to_dict()
    gate = AgeGate.from_dict(gates[str(adult_age)])
    path = Path(output) if output is not None else checkpoint
    if onnx_file:
        from ..inference.export import AGE_GATES_KEY as ONNX_GATES_KEY
        from ..inference.export import SPEC_KEY, write_onnx_metadata

        entries = {ONNX_GATES_KEY: json.dumps(gates)}
        if tempered is not None:
            entries[SPEC_KEY] = json.dumps(spec)
        write_onnx_metadata(checkpoint, path, entries)
    else:
        save_checkpoint(path, {**ckpt, "spec": spec, AGE_GATES_KEY: gates,
                               **({"temperature_fit": tempered} if tempered is not None else {})})
    return CalibrationResult(gate=gate, path=path, warnings=_warnings(gate, split), temperature=tempered,
                             regated=sorted(a for a in targets if a != adult_age))
