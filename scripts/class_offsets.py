"""Per-class offsets on the class masses, fitted on validation to maximise accuracy, scored on test.

The 14- and 8-class answers are the most probable class of the age distribution's class masses, which is the
right rule for a calibrated distribution. This asks whether the model's classes are systematically off in a
way a per-class log-offset ``b_c`` (answer ``argmax_c log m_c + b_c``) fixes: ``b`` is fitted on the
validation split by coordinate ascent over a grid (5 sweeps, offsets in [-1, 1]), then the test split is
scored with it. A gain on validation that does not carry to test is the offsets fitting validation's noise.

    python scripts/class_offsets.py deepage/assets/default_model.int8.onnx --data work/utk160.h5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from deepage.data.loader import FaceBatches, load_split
from deepage.evaluation.evaluate import load_for_evaluation
from deepage.evaluation.predictions import collect_predictions
from deepage.labels import get_scheme
from deepage.readout import class_masses

GRID = np.linspace(-1.0, 1.0, 41)


def fit_offsets(log_mass: np.ndarray, y: np.ndarray, sweeps: int = 5) -> np.ndarray:
    """``(N, C)`` log class masses and ``(N,)`` classes → ``(C,)`` offsets maximising accuracy (coordinate
    ascent; ties keep the smaller offset)."""
    b = np.zeros(log_mass.shape[1])
    for _ in range(sweeps):
        for c in range(len(b)):
            scores = []
            for g in GRID:
                trial = b.copy()
                trial[c] = g
                scores.append(np.mean((log_mass + trial).argmax(1) == y))
            b[c] = GRID[int(np.argmax(scores))]
    return b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .pt checkpoint or an .onnx graph")
    parser.add_argument("--data", required=True)
    args = parser.parse_args()
    model, _ = load_for_evaluation(Path(args.checkpoint))
    masses, truth = {}, {}
    for split in ("val", "test"):
        data = load_split(args.data, split)
        preds = collect_predictions(model, FaceBatches(data, model.spec.preprocessing, 128))
        masses[split], truth[split] = class_masses(preds.age_probs), np.asarray(preds.age_true)
    for scheme in ("utk14", "utk8"):
        classify = get_scheme(scheme).classify
        log_val, log_test = (np.log(masses[s][scheme] + 1e-9) for s in ("val", "test"))
        y_val, y_test = classify(truth["val"]), classify(truth["test"])
        b = fit_offsets(log_val, y_val)
        before = [np.mean(log.argmax(1) == y) for log, y in ((log_val, y_val), (log_test, y_test))]
        after = [np.mean((log + b).argmax(1) == y) for log, y in ((log_val, y_val), (log_test, y_test))]
        print(f"{scheme}: validation {before[0]:.2%} -> {after[0]:.2%}, test {before[1]:.2%} -> {after[1]:.2%}; "
              f"offsets {np.round(b, 2).tolist()}")


if __name__ == "__main__":
    main()
