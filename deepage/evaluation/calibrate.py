"""``deepage calibrate``: choose the minor/adult check's operating point on a split and store it in the checkpoint.

The model's age distribution gives each face ``P(age >= A)`` (:func:`deepage.answers.p_at_least`); the two
thresholds that turn it into ``adult`` / ``minor`` / ``unsure`` are chosen once, on the validation split, by
:func:`deepage.answers.choose_age_gate`, and written into the checkpoint under ``age_gates`` (atomically, the
rest of the file unchanged), so every later ``predict``, ``serve`` and ``export`` uses the same ones:

    deepage calibrate runs/NAME/best.pt --data work/utk128.h5 --split val --adult-age 18
    deepage evaluate runs/NAME/best.pt --data work/utk128.h5 --split test --adult-age 18   # the honest rates
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

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
from .evaluate import _has_saved_split, _timed_predictions, load_for_evaluation
from .report import fmt_pct

__all__ = ["CalibrationResult", "calibrate_checkpoint"]


@dataclass
class CalibrationResult:
    """The operating point :func:`calibrate_checkpoint` chose and the file it was written to."""

    gate: AgeGate
    path: Path
    warnings: list[str] = field(default_factory=list)

    def summary_text(self) -> str:
        g = self.gate
        lines = [f"adult age {g.adult_age}, chosen on split '{g.split}' of {g.data} ({g.n_minors} minors, "
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
                         device: str | torch.device | None = None) -> CalibrationResult:
    """Choose the operating point for ``adult_age`` on ``split`` of ingested ``data`` and write it into
    ``output`` (default: ``checkpoint`` itself, replaced atomically) beside any stored for other ages.

    ``split`` must be saved in ``data`` (``all``: every image, for a data set the model never trained on).
    ``tta_flip``: score with the mirror image too (then predict with ``--tta`` for the stated rates).
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
    gate = choose_age_gate(preds.age_true, p_at_least(preds.age_probs, adult_age), adult_age,
                           max_minors_passed=max_minors_passed, max_adults_held=max_adults_held)
    gate = replace(gate, split=split, data=data.name, data_fingerprint=str(face_data.fingerprint),
                   checkpoint_fingerprint=str(ckpt.get("split_fingerprint", "unknown")),
                   weights=(ckpt["weights_digest"] or "") if onnx_file else weights_digest(ckpt["state_dict"]),
                   tta_flip=bool(tta_flip))
    gates = dict(ckpt.get(AGE_GATES_KEY) or {})
    gates[str(adult_age)] = gate.to_dict()
    path = Path(output) if output is not None else checkpoint
    if onnx_file:
        from ..inference.export import AGE_GATES_KEY as ONNX_GATES_KEY
        from ..inference.export import write_onnx_metadata

        write_onnx_metadata(checkpoint, path, {ONNX_GATES_KEY: json.dumps(gates)})
    else:
        save_checkpoint(path, {**ckpt, AGE_GATES_KEY: gates})
    return CalibrationResult(gate=gate, path=path, warnings=_warnings(gate, split))
