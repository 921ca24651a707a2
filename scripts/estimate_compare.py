"""One model's age distributions, read into one age in several ways: MAE and CS@5 of each, on a split.

    python scripts/estimate_compare.py deepage/assets/default_model.pt --data work/utk160.h5 --split val test

Rows: the distribution's mean (DEX as published) and that mean rounded to whole years; its median in whole
years (the smallest age whose cumulative mass reaches 1/2: what ``estimate: median``, the DEX head's
default, answers); and the median interpolated within its year (each age spread over ``[a - 0.5, a + 0.5]``,
as the interval's quantiles are). Labels are whole years, so a whole-year answer is within 5 years of the
label whenever its error is at most 5; a fractional answer needs ``|error| <= 5`` too, and 5.3 misses: the
rounded mean separates that from the choice of the median.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from deepage.checkpoint import model_from_checkpoint
from deepage.data.loader import FaceBatches, load_split
from deepage.evaluation.predictions import collect_predictions
from deepage.models.heads import age_quantiles, point_age


def readings(age_probs: np.ndarray) -> dict[str, np.ndarray]:
    """``(N, 101)`` distributions → name → ``(N,)`` ages."""
    probs = torch.from_numpy(np.asarray(age_probs, np.float64))
    mean = point_age(probs, "mean").numpy()
    return {"mean": mean, "mean, rounded": np.round(mean), "median (whole years)": point_age(probs, "median").numpy(),
            "median, interpolated": age_quantiles(age_probs, 0.5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", nargs="+", default=["val"])
    args = parser.parse_args()
    model = model_from_checkpoint(args.checkpoint)
    for split in args.split:
        data = load_split(args.data, split)
        preds = collect_predictions(model, FaceBatches(data, model.spec.preprocessing, 128))
        truth = np.asarray(preds.age_true, np.float64)
        print(f"{args.checkpoint} on {split} ({len(truth)} images)")
        for name, age in readings(preds.age_probs).items():
            err = np.abs(age - truth)
            print(f"  {name:<24} MAE {err.mean():.3f}  CS@5 {np.mean(err <= 5):.1%}")


if __name__ == "__main__":
    main()
