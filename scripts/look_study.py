"""Which HOG looks to take at a photo, and in what order: the cost and the faces found of candidate orders of
:class:`deepage.faces.Look`, on photos whose face position is known.

Every candidate look is run once on every photo (timed; its boxes kept), then each order is *simulated* as
:meth:`FaceAligner._boxes` takes it (the first look with a box scoring ``min_score`` wins; if none does, the
best box over dlib's own threshold in the first look that has one; then the Haar second chance, timed
separately). A photo counts as found when a chosen box holds the true face centre, and as wrong when the
boxes chosen hold none of it; on the real photos, the median distance of the landmarks placed from the chosen
box to the true ones (in eye distances) says whether the faces found are still aligned. The sets:

* ``real``: ``bench/predict_batch.py``'s real photos (scikit-image's astronaut and camera, 150-1400 px,
  rotated by up to 20°, mirrored, cropped): their face centre is the source photo's face centre carried by
  the known transform;
* ``photos``: its pasted photo stand-ins (UTKFace chips on backgrounds): the chip's centre;
* ``chips``: UTKFace chips from ``--data``'s training split: the chip's centre.

    python scripts/look_study.py --data work/utk128.h5                 # 300 of each (about 4 minutes)
    python scripts/look_study.py --data work/utk128.h5 --n 60           # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from predict_batch import ARCHIVE, paste_on_background_at, read_chips, real_photo_and_matrix, real_sources  # noqa: E402

from deepage.faces import WEAK_SCORE, FaceAligner, Look  # noqa: E402
from deepage.imageio import decode_image  # noqa: E402


def real_set(n: int, seed: int) -> list[tuple[np.ndarray, tuple[float, float] | None, np.ndarray | None]]:
    """``n`` (photo, true face centre, true 5 landmarks ``(5, 2)``) triples, made as ``bench/predict_batch.py``
    makes its real photos (the landmarks: dlib's on the source photo, carried by the known transform)."""
    sources = real_sources()
    aligner = FaceAligner(detector="dlib")
    # camera()'s cameraman, turned to his viewfinder, is found by no look at the source's own size: for his
    # photos any face counts as found (as the bench counts them) and there are no landmarks to compare
    marks = [faces[0].landmarks if (faces := aligner.detect(rgb)) else None for rgb in sources]
    rng = np.random.default_rng(seed + 2)
    out = []
    for k in range(n):
        photo, matrix = real_photo_and_matrix(sources[k % len(sources)], rng)
        rng.integers(70, 96)  # the bench's JPEG quality draw, so that the photos stay the bench's
        if marks[k % len(sources)] is None:
            out.append((photo, None, None))
            continue
        true = marks[k % len(sources)] @ matrix[:, :2].T + matrix[:, 2]
        if matrix[0, 0] * matrix[1, 1] - matrix[0, 1] * matrix[1, 0] < 0:  # mirrored: left and right swap
            true = true[[2, 3, 0, 1, 4]]
        out.append((photo, (float(true[:, 0].mean()), float(true[:, 1].mean())), true))
    return out


def chip_sets(archive: Path, data: Path | None, n: int, seed: int) -> dict[str, list]:
    """UTKFace chips (their centre) and pasted photos (the pasted chip's centre)."""
    chips = read_chips(archive, 2 * n, seed, data, split=0)  # training chips: the look order is fitted here
    rng = np.random.default_rng(seed + 1)
    sets: dict[str, list] = {"chips": [], "photos": []}
    for k, (_, jpeg) in enumerate(chips):
        rgb = decode_image(jpeg)
        if k < n:
            sets["chips"].append((rgb, (rgb.shape[1] / 2, rgb.shape[0] / 2), None))
            continue
        photo, (x, y, side) = paste_on_background_at(rgb, rng)
        sets["photos"].append((photo, (x + side / 2, y + side / 2), None))
    return sets


def holds(box: tuple, centre: tuple[float, float] | None) -> bool:
    """Whether ``box`` holds the true face centre (any box, where there is no reference)."""
    return centre is None or (box[0] <= centre[0] <= box[2] and box[1] <= centre[1] <= box[3])


def landmark_error(aligner: FaceAligner, photo: np.ndarray, box: tuple, true: np.ndarray) -> float:
    """Mean distance of dlib's 5 landmarks, placed from ``box``, to the ``true`` ones, in eye distances."""
    import dlib

    shape = aligner._build()["shape"]
    rect = dlib.rectangle(*(int(round(v)) for v in box[:2]), int(round(box[2])) - 1, int(round(box[3])) - 1)
    found = np.array([(p.x, p.y) for p in shape(photo, rect).parts()], np.float64)
    eyes = np.linalg.norm(true[:2].mean(0) - true[2:4].mean(0))
    return float(np.linalg.norm(found - true, axis=1).mean() / eyes)


def candidate_looks(h: int, w: int, aligner: FaceAligner) -> dict[str, Look]:
    """Named looks for an ``h`` x ``w`` photo: today's four and the ones this study weighs."""
    pad = max(h, w) // 4
    big = min(max(h, w), aligner.max_side) >= 400
    looks = {
        "0.85": Look(scale=0.85),
        "eq": Look(equalise=True),
        "border": Look(pad=pad, max_side=320 if big else None, equalise=True),
        "up": Look(upsample=1, equalise=True),
        "640": Look(max_side=640),
    }
    return looks


ORDERS = {
    "before": ["0.85", "eq", "border", "up"],
    "no 4x above 640 px": ["0.85", "eq", "border", "up<=640"],
    "640 px instead of 4x above 640 (shipped)": ["0.85", "eq", "border", "640>", "up<=640"],
    "640 px first": ["640>", "0.85", "eq", "border", "up"],
    "640 px first, no 4x above 640": ["640>", "0.85", "eq", "border", "up<=640"],
    "640 px first, no own scale": ["640>", "eq", "border", "up<=640"],
}
"""Orders of :func:`candidate_looks` names. ``"640>"``: that look only where the photo's working side exceeds
640 px; ``"up<=640"``: the enlarged look only where it is at most 640 px."""


def run_looks(aligner: FaceAligner, photo: np.ndarray) -> dict[str, tuple[float, list]]:
    """Every candidate look on ``photo``: name -> (seconds, boxes with scores)."""
    grey = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    out = {}
    for name, look in candidate_looks(*photo.shape[:2], aligner).items():
        t = time.perf_counter()
        boxes = aligner._raw_boxes(grey, look)
        out[name] = (time.perf_counter() - t, boxes)
    t = time.perf_counter()
    second = aligner._second_chance(grey)
    out["second"] = (time.perf_counter() - t, second)
    return out


def simulate(order: list[str], results: dict, side: int, min_score: float) -> tuple[float, list]:
    """(seconds, chosen boxes) of ``order`` (see :data:`ORDERS`) as :meth:`FaceAligner._boxes` takes it."""
    seconds, passes = 0.0, []
    for name in order:
        if name == "up<=640":
            if side > 640:
                continue
            name = "up"
        elif name.endswith(">"):
            name = name[:-1]
            if side <= int(name):
                continue
        dt, boxes = results[name]
        seconds += dt
        passes.append(boxes)
        strong = [b for b in boxes if b[1] >= min_score]
        if strong:
            return seconds, strong
    for boxes in passes:
        weak = [b for b in boxes if b[1] >= WEAK_SCORE]
        if weak:
            return seconds, [max(weak, key=lambda b: b[1])]
    dt, boxes = results["second"]
    return seconds + dt, boxes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", default=str(ARCHIVE))
    parser.add_argument("--data", default=None, help="ingested HDF5: chips come from its training split")
    parser.add_argument("--n", type=int, default=300, help="photos in each set (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="the bench's seed (default 0: its photos)")
    args = parser.parse_args(argv)

    aligner = FaceAligner(detector="dlib")  # the HOG looks are what this studies
    sets = {"real": real_set(args.n, args.seed)}
    sets.update(chip_sets(Path(args.archive), Path(args.data) if args.data else None, args.n, args.seed))
    print(f"command: python scripts/look_study.py {' '.join(argv or sys.argv[1:])}")
    print(f"{'set':<8}{'order':<40}{'found':>8}{'wrong':>8}{'ms/photo':>10}{'landmark err':>14}")
    for set_name, items in sets.items():
        runs = [(run_looks(aligner, photo), centre, min(max(photo.shape[:2]), aligner.max_side), photo, true)
                for photo, centre, true in items]
        for order_name, order in ORDERS.items():
            found = wrong = 0
            seconds, errors = 0.0, []
            for results, centre, side, photo, true in runs:
                dt, boxes = simulate(order, results, side, aligner.min_score)
                seconds += dt
                hits = [b for b, _ in boxes if holds(b, centre)]
                found += bool(hits)
                wrong += bool(boxes) and not hits
                if hits and true is not None:
                    errors.append(landmark_error(aligner, photo, hits[0], true))
            err = f"{np.median(errors):.3f}" if errors else "-"
            print(f"{set_name:<8}{order_name:<40}{found / len(runs):>8.1%}{wrong / len(runs):>8.1%}"
                  f"{1000 * seconds / len(runs):>10.1f}{err:>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
