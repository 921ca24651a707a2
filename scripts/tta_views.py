"""Test-time views beyond the mirror image: each view's age distributions, and their averages, on a split.

    python scripts/tta_views.py deepage/assets/default_model.pt --data work/utk160.h5 --split val

Views: the central crop the model was trained to see at evaluation (its ``crop_pct``), a tighter and a looser
one (``--crops``), each as is and mirrored. Rows: each single view, the mirror pair at the model's own crop
(what ``--tta`` does), and every view averaged; each row's distributions are averaged, then read as the head
reads one (the median in whole years; classes from the class masses). A lever is worth building only where
its row beats the mirror pair by more than the spread of two identical runs (0.015 years, issue 15).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from deepage.checkpoint import model_from_checkpoint
from deepage.data.loader import FaceBatches, load_split
from deepage.evaluation.metrics import cumulative_score, mae
from deepage.labels import get_scheme
from deepage.models.heads import point_age


def view_probs(model, data, crop_pct: float, flip: bool, batch_size: int = 128) -> np.ndarray:
    """``(N, 101)`` the model's age distributions of ``data`` seen at ``crop_pct`` (mirrored if ``flip``)."""
    pre = dataclasses.replace(model.spec.preprocessing, crop_pct=crop_pct)
    out = []
    with torch.inference_mode():
        for batch in FaceBatches(data, pre, batch_size):
            x = torch.flip(batch.x, dims=[3]) if flip else batch.x
            out.append(model.predict(model(x)).age_probs.float().numpy())
    return np.concatenate(out)


def scores(probs: np.ndarray, ages: np.ndarray) -> dict[str, float]:
    """MAE, CS@5 and the 14- and 8-class accuracies of ``(N, 101)`` distributions against ``(N,)`` ages."""
    pred = point_age(torch.from_numpy(probs), "median").numpy()
    row = {"mae": mae(ages, pred), "cs5": cumulative_score(ages, pred, 5)}
    for name in ("utk14", "utk8"):
        scheme = get_scheme(name)
        masses = probs @ scheme.age_to_class_matrix()
        row[name] = float((masses.argmax(1) == scheme.classify(ages.astype(np.int64))).mean())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--crops", type=float, nargs="+", default=[0.875, 1.0],
                        help="crop_pct of the other views (the model's own is always in)")
    args = parser.parse_args()
    model = model_from_checkpoint(args.checkpoint)
    data = load_split(args.data, args.split)
    ages = data.age.numpy().astype(np.float64)  # FaceBatches keeps the split's order unless shuffled
    own = model.spec.preprocessing.crop_pct
    views = {(c, f): view_probs(model, data, c, f) for c in [own, *args.crops] for f in (False, True)}
    rows = {f"crop {c:.4g}{', mirrored' if f else ''}": p for (c, f), p in views.items()}
    rows[f"mirror pair at {own:.4g} (--tta)"] = (views[own, False] + views[own, True]) / 2
    for c in args.crops:
        rows[f"crops {own:.4g} + {c:.4g}, each mirrored"] = sum(views[k, f] for k in (own, c) for f in (0, 1)) / 4
    rows["every view"] = sum(views.values()) / len(views)
    print(f"{args.checkpoint} on {args.split} ({len(ages)} faces), answers by the median")
    print(f"| {'views':44s} | MAE | CS@5 | 14 classes | 8 classes |\n|---|---|---|---|---|")
    for name, p in rows.items():
        s = scores(p, ages)
        print(f"| {name:44s} | {s['mae']:.3f} | {100 * s['cs5']:.1f} % | {100 * s['utk14']:.1f} % | "
              f"{100 * s['utk8']:.1f} % |")


if __name__ == "__main__":
    main()
