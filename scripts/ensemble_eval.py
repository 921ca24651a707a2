"""Score an ensemble: several checkpoints' age distributions averaged on one split (issue 15, item 4).

    python scripts/ensemble_eval.py runs/a/best.pt runs/b/best.pt --data work/utk160.h5 --split val
    python scripts/ensemble_eval.py runs/a/best.pt runs/m/best.pt --data work/utk160.h5 work/utk128.h5

One ``--data`` file for all checkpoints, or one per checkpoint (models trained at other stored sizes); the
files must hold the same images in the same rows with the same split (``deepage split B --from A``), which
is checked by file name. Prints each member's and the ensemble's MAE, CS@5 and class accuracies
(the classes from the averaged distribution's mass per bin, as the DEX head answers them).

    python scripts/ensemble_eval.py a.pt b.pt c.pt d.pt s.pt --data work/utk160.h5 --subsets --reference 0,1,2,3 \
        --cache runs/probs

``--subsets`` scores every subset of the checkpoints (one pass of each model; ``--cache`` keeps those passes)
against the ``--reference`` subset on the same images: MAE difference and its paired bootstrap SE.

    python scripts/ensemble_eval.py a.pt b.pt c.pt d.pt --data work/utk160.h5 --weighted --cache runs/probs

``--weighted`` fits unequal member weights (the mixture's likelihood of the true ages) and scores them
out of fold (5 folds: each image answered by weights fitted on the other four fifths) against the plain mean.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import torch

from deepage.checkpoint import model_from_checkpoint
from deepage.data.loader import FaceBatches, load_split
from deepage.evaluation.metrics import core_metrics
from deepage.evaluation.predictions import collect_predictions
from deepage.evaluation.subsets import crossfit_weights, distribution_predictions, score_subsets


def member_probs(ckpt: str, data, tta: bool, cache_dir: Path | None, key: str) -> np.ndarray:
    """``(N, 101)`` float64: one checkpoint's age distributions on the split, from ``cache_dir`` when a file
    there was made from the same checkpoint (path, size, mtime), data file, split and ``tta``."""
    stat = Path(ckpt).stat()
    digest = hashlib.sha1(f"{Path(ckpt).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{key}|{tta}".encode())
    cached = cache_dir / f"{Path(ckpt).stem}-{digest.hexdigest()[:12]}.npy" if cache_dir else None
    if cached is not None and cached.is_file():
        return np.load(cached)
    model = model_from_checkpoint(ckpt)
    preds = collect_predictions(model, FaceBatches(data, model.spec.preprocessing, 128), tta_flip=tta)
    if preds.age_probs is None:
        raise SystemExit(f"{ckpt}: an ensemble averages age distributions; this head gives none")
    probs = preds.age_probs.astype(np.float64)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, probs)
    return probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data", nargs="+", required=True, help="one HDF5 file, or one per checkpoint")
    parser.add_argument("--split", default="val")
    parser.add_argument("--tta", action="store_true", help="each member averages with the mirrored image")
    parser.add_argument("--subsets", action="store_true",
                        help="score every subset of the checkpoints against --reference, best MAE first")
    parser.add_argument("--reference", default=None,
                        help="with --subsets: the reference subset as 0-based indices, e.g. 0,1,2,3 (default: all)")
    parser.add_argument("--weighted", action="store_true",
                        help="fit unequal member weights and score them out of fold against the plain mean")
    parser.add_argument("--folds", type=int, default=5, help="with --weighted: how many folds (default 5)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="a folder keeping each checkpoint's distributions, reused while the file is unchanged")
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
        members.append(member_probs(ckpt, data, args.tta, args.cache, f"{Path(path).resolve()}|{args.split}"))
    if args.subsets:
        try:
            reference = ([int(i) for i in args.reference.split(",")] if args.reference
                         else list(range(len(members))))
        except ValueError:
            parser.error(f"--reference {args.reference!r}: give 0-based member indices such as 0,1,2")
        try:
            rows = score_subsets(age_true, members, reference)
        except ValueError as err:
            parser.error(str(err))
        print(f"{len(age_true)} images; reference: members {reference}")
        for i, ckpt in enumerate(args.checkpoints):
            print(f"  [{i}] {ckpt}")
        for r in rows:
            d = r["vs_reference"]
            print(f"{str(r['members']):<20} MAE {r['mae']:.3f}  vs ref {d['difference']:+.3f} (SE {d['se']:.3f})  "
                  f"CS@5 {100 * r['cs5']:.1f} %  14 / 8 classes {100 * r['utk14']:.1f} / {100 * r['utk8']:.1f} %")
        return
    if args.weighted:
        try:
            fit = crossfit_weights(age_true, members, folds=args.folds)
        except ValueError as err:
            parser.error(str(err))
        for k, ckpt in enumerate(args.checkpoints):
            print(f"  [{k}] {ckpt}: weight {fit['weights'][k]:.3f} (folds {fit['fold_weights'][:, k].min():.3f}-"
                  f"{fit['fold_weights'][:, k].max():.3f})")
        for label in ("equal", "weighted"):
            r = fit[label]
            print(f"{label + (' (out of fold)' if label == 'weighted' else ''):<22} MAE {r['mae']:.3f}  CS@5 "
                  f"{100 * r['cs5']:.1f} %  14 / 8 classes {100 * r['utk14']:.1f} / {100 * r['utk8']:.1f} %")
        d = fit["vs_equal"]
        print(f"weighted - equal: {d['difference']:+.3f} (SE {d['se']:.3f})")
        return
    rows = {ckpt: core_metrics(distribution_predictions(age_true, p))
            for ckpt, p in zip(args.checkpoints, members, strict=True)}
    rows["ensemble (mean of the distributions)"] = core_metrics(
        distribution_predictions(age_true, np.mean(members, 0)))
    for name, m in rows.items():
        print(f"{name}: MAE {m['age']['mae']:.3f}, CS@5 {100 * m['age']['cs5']:.1f} %, 14 classes "
              f"{100 * m['utk14']['accuracy']:.1f} %, 8 classes {100 * m['utk8']['accuracy']:.1f} %")
    print(json.dumps({"split": args.split, "n": len(age_true), "tta": args.tta, "rows": rows}))


if __name__ == "__main__":
    main()
