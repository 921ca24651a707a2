"""How much of a model's class error is UTKFace's labelling habit: ages heaped at a few values, some of them on
the 14 / 8 classes' edges. An analysis, not a model change.

    python scripts/label_heaping.py deepage/assets/default_model.pt --data work/utk160.h5

UTKFace's ages are heaped: in the 21,336 chips here 2,005 carry 26 (its neighbours 25 and 27: 669 and 556),
and 35, 40, 45, 50, 60, 65 and 70 stand out likewise. 26 is the first age of the 26-30 class, and 45, 50, ...
the last ages of theirs, so a face a labeller called "26" that looks 24 costs a class; a DEX head trained on
Gaussian soft labels (sigma 2) spreads its mass over both sides of the edge.

Prints, for each split:

1. the class accuracy (the distribution's class masses, as ``deepage evaluate`` reads them), and the share of
   class errors whose true age is one of the heaped ages;
2. the same model with the training labels' heaping put back as a prior:
   ``p'(a|x) ∝ p(a|x) * (h(a) / (h * G_sigma)(a)) ** lam`` with ``h`` the training split's age histogram
   and ``G_sigma`` the soft labels' Gaussian. ``lam`` is chosen on ``--fit-split`` (validation) and applied
   unchanged to the others, so the test row is an honest estimate **for UTKFace's labels**. On photos
   whose ages are exact (FG-NET) such a prior can only hurt, which is why no shipped reading uses it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from deepage.checkpoint import model_from_checkpoint
from deepage.data.loader import FaceBatches, load_split
from deepage.evaluation.metrics import cumulative_score, mae
from deepage.evaluation.predictions import collect_predictions
from deepage.labels import AGE_BINS, get_scheme
from deepage.models.heads import gaussian_age_targets
from deepage.readout import class_masses, point_age

LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def heaping_ratio(train_ages: np.ndarray, sigma: float) -> np.ndarray:
    """``(101,)``: the training labels' histogram (add-one smoothed) over the histogram of their soft labels
    (the DEX head's own Gaussians), the factor by which sigma-wide soft labels under-state each heaped age."""
    hist = np.bincount(np.clip(train_ages, 0, AGE_BINS - 1), minlength=AGE_BINS).astype(np.float64) + 1.0
    soft = gaussian_age_targets(torch.arange(AGE_BINS), sigma).double().numpy()  # (101, 101): row = label age
    return hist / (hist @ soft)


def class_hits(probs: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """``(N, 101)`` distributions, ``(N,)`` ages → scheme → ``(N,)`` bool: the class-mass argmax is right."""
    return {name: masses.argmax(1) == get_scheme(name).classify(truth)
            for name, masses in class_masses(probs).items()}


def scores(probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``(N, 101)`` distributions and ``(N,)`` ages → 14 / 8-class accuracy (argmax of the class masses),
    MAE and CS@5 of the whole-year median."""
    out = {name: float(hit.mean()) for name, hit in class_hits(probs, truth).items()}
    age = point_age(probs, "median")
    out["mae"], out["cs5"] = mae(truth, age), cumulative_score(truth, age)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--fit-split", default="val")
    parser.add_argument("--sigma", type=float, default=2.0, help="the soft labels' sigma (the DEX recipes' 2.0)")
    parser.add_argument("--heaped", default="26,35,40,45,50,60,65,70", help="ages counted as heaped")
    args = parser.parse_args()
    heaped = np.array([int(a) for a in args.heaped.split(",")])
    ratio = heaping_ratio(np.asarray(load_split(args.data, "train").age, np.int64), args.sigma)
    print("heaping ratio at " + ", ".join(f"{a}: {ratio[a]:.2f}" for a in heaped))
    model = model_from_checkpoint(args.checkpoint)
    results: dict[str, dict[float, dict[str, float]]] = {}
    for split in dict.fromkeys([args.fit_split, *args.splits]):
        data = load_split(args.data, split)
        preds = collect_predictions(model, FaceBatches(data, model.spec.preprocessing, 128))
        probs, truth = np.asarray(preds.age_probs, np.float64), np.asarray(preds.age_true, np.int64)
        wrong = ~class_hits(probs, truth)["utk14"]
        share = np.mean(np.isin(truth[wrong], heaped)) if wrong.any() else 0.0
        print(f"{split} ({len(truth)}): {np.mean(np.isin(truth, heaped)):.1%} of faces carry a heaped age, "
              f"{share:.1%} of the 14-class errors")
        results[split] = {}
        for lam in LAMBDAS:
            tilted = probs * ratio[None, :] ** lam
            results[split][lam] = scores(tilted / tilted.sum(1, keepdims=True), truth)
    best = max(LAMBDAS, key=lambda lam: results[args.fit_split][lam]["utk14"])
    print(f"\nlam chosen on {args.fit_split} by 14-class accuracy: {best}\n")
    print("| split | lam | 14 classes | 8 classes | MAE | CS@5 |\n|---|---|---|---|---|---|")
    for split in results:
        for lam in LAMBDAS:
            r = results[split][lam]
            mark = " (chosen)" if lam == best else ""
            print(f"| {split} | {lam}{mark} | {r['utk14']:.1%} | {r['utk8']:.1%} | {r['mae']:.3f} | {r['cs5']:.1%} |")


if __name__ == "__main__":
    main()
