"""Is model B better than model A on the same images, or is the difference noise? A paired bootstrap over
two ``predictions.csv`` files of ``deepage evaluate`` (same data, same split).

    deepage evaluate runs/a/best.pt --data work/utk160.h5 --split val --out runs/a/eval-val
    deepage evaluate runs/b/best.pt --data work/utk200.h5 --split val --out runs/b/eval-val
    python scripts/paired_compare.py runs/a/eval-val/predictions.csv runs/b/eval-val/predictions.csv

Prints, for the MAE (per-image absolute error), CS@5 and the 14- and 8-class accuracies, B minus A with its
bootstrap standard error and 95 % interval. The images are matched by their HDF5 ``row`` (ingests at
different sizes of one archive share rows).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from deepage.evaluation.metrics import paired_bootstrap
from deepage.labels import get_scheme


def read_predictions(path: Path) -> dict[int, dict[str, float]]:
    """``predictions.csv`` → ``{row: {age_true, age_pred, pred_utk14, pred_utk8}}``."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"row", "age_true", "age_pred", "pred_utk14", "pred_utk8"} <= set(rows[0]):
        raise ValueError(f"{path}: not a predictions.csv of deepage evaluate (row, age_true, age_pred, pred_*)")
    return {int(r["row"]): {k: float(r[k]) for k in ("age_true", "age_pred", "pred_utk14", "pred_utk8")}
            for r in rows}


def per_image_scores(pred: dict[int, dict[str, float]], rows: list[int]) -> dict[str, np.ndarray]:
    """``(N,)`` per-image scores in ``rows`` order: absolute error, within 5 years, class correct."""
    true = np.array([pred[r]["age_true"] for r in rows])
    error = np.abs(np.array([pred[r]["age_pred"] for r in rows]) - true)
    scores = {"MAE": error, "CS@5": (error <= 5).astype(float)}
    for scheme in ("utk14", "utk8"):
        true_class = np.asarray(get_scheme(scheme).classify(true.astype(int)))
        scores[f"{scheme} accuracy"] = (np.array([pred[r][f"pred_{scheme}"] for r in rows]) == true_class).astype(float)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="predictions.csv of model A")
    parser.add_argument("b", type=Path, help="predictions.csv of model B")
    parser.add_argument("--n-boot", type=int, default=2000)
    args = parser.parse_args()
    a, b = read_predictions(args.a), read_predictions(args.b)
    if set(a) != set(b):
        raise SystemExit(f"{args.a} and {args.b} score different images ({len(a)} and {len(b)} rows, "
                         f"{len(set(a) & set(b))} shared): evaluate both on the same split")
    rows = sorted(a)
    mismatched = [r for r in rows if a[r]["age_true"] != b[r]["age_true"]]
    if mismatched:
        raise SystemExit(f"{args.a} and {args.b} give row {mismatched[0]} different true ages "
                         f"({len(mismatched)} rows): they are not the same images")
    sa, sb = per_image_scores(a, rows), per_image_scores(b, rows)
    print(f"{len(rows)} images; B - A (negative MAE = B better; positive accuracy = B better)")
    print("| metric | A | B | B - A | bootstrap SE | 95 % interval |")
    print("|---|---|---|---|---|---|")
    for name in sa:
        r = paired_bootstrap(sa[name], sb[name], n_boot=args.n_boot)
        scale = 1 if name == "MAE" else 100
        print(f"| {name} | {scale * sa[name].mean():.3f} | {scale * sb[name].mean():.3f} | "
              f"{scale * r['difference']:+.3f} | {scale * r['se']:.3f} | "
              f"[{scale * r['ci95'][0]:+.3f}, {scale * r['ci95'][1]:+.3f}] |")


if __name__ == "__main__":
    main()
