"""Score an ensemble: several checkpoints' age distributions averaged on one split (issue 15, item 4).

    python scripts/ensemble_eval.py runs/a/best.pt runs/b/best.pt --data work/utk160.h5 --split val
    python scripts/ensemble_eval.py runs/a/best.pt runs/m/best.pt --data work/utk160.h5 work/utk128.h5

One ``--data`` file for all checkpoints, or one per checkpoint (models trained at other stored sizes); the
files must hold the same images in the same rows with the same split (``deepage split B --from A``), which
is checked by file name. Prints each member's and the ensemble's MAE, CS@5 and class accuracies
(the classes from the averaged distribution's mass per bin, as the DEX head answers them).
"""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import torch

from deepage.checkpoint import model_from_checkpoint
from deepage.data.loader import FaceBatches, load_split
from deepage.evaluation.metrics import core_metrics
from deepage.evaluation.predictions import Predictions, collect_predictions
from deepage.models.heads import DexHead


def _from_distribution(age_true: np.ndarray, probs: np.ndarray) -> Predictions:
    """``(N, 101)`` age distributions → predictions as a DEX head gives them (the head's own ``predict`` on
    their logarithms: softmax(log p) is p, renormalised)."""
    out = DexHead(1).predict(torch.from_numpy(np.log(np.maximum(probs, 1e-12))).float())
    return Predictions(age_true=age_true, age_pred=out.age.numpy(),
                       class_probs={k: v.numpy() for k, v in out.class_probs.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", nargs="+", required=True, help="one HDF5 file, or one per checkpoint")
    parser.add_argument("--split", default="val")
    parser.add_argument("--tta", action="store_true", help="each member averages with the mirrored image")
    args = parser.parse_args()
    if len(args.data) not in (1, len(args.checkpoints)):
        parser.error("give one --data file, or one per checkpoint")
    files = args.data * len(args.checkpoints) if len(args.data) == 1 else args.data
    torch.set_num_threads(2)
    names, members, age_true = None, [], None
    for ckpt, path in zip(args.checkpoints, files, strict=True):
        data = load_split(path, args.split)
        with h5py.File(path, "r") as f:
            these = f["filename"][:][data.rows]
        if names is not None and not np.array_equal(names, these):
            raise SystemExit(f"{path}: the split's images differ from {files[0]}'s")
        names, age_true = these, data.age.numpy()
        model = model_from_checkpoint(ckpt)
        preds = collect_predictions(model, FaceBatches(data, model.spec.preprocessing, 128), tta_flip=args.tta)
        if preds.age_probs is None:
            raise SystemExit(f"{ckpt}: an ensemble averages age distributions; this head gives none")
        members.append(preds.age_probs.astype(np.float64))
    rows = {ckpt: core_metrics(_from_distribution(age_true, p)) for ckpt, p in zip(args.checkpoints, members,
                                                                                    strict=True)}
    rows["ensemble (mean of the distributions)"] = core_metrics(_from_distribution(age_true, np.mean(members, 0)))
    for name, m in rows.items():
        print(f"{name}: MAE {m['age']['mae']:.3f}, CS@5 {100 * m['age']['cs5']:.1f} %, 14 classes "
              f"{100 * m['utk14']['accuracy']:.1f} %, 8 classes {100 * m['utk8']['accuracy']:.1f} %")
    print(json.dumps({"split": args.split, "n": len(age_true), "tta": args.tta, "rows": rows}))


if __name__ == "__main__":
    main()
