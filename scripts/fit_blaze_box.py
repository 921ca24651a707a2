"""Fit :data:`deepage.faces.BLAZE_TO_HOG` and check it: where BlazeFace's box must move to become the HOG box
that dlib's landmark model expects.

On ``--n`` UTKFace *training* chips where HOG (its own scale, score >= 0.5) and BlazeFace both find the
face, the medians of the HOG box's side and centre offset in units of BlazeFace's box width. Then on
``--n`` *validation* chips, the landmarks the model places from each box: their distance, as a share of
the distance between the eyes (0 would be the same chips).

    python scripts/fit_blaze_box.py --data work/utk128.h5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from predict_batch import ARCHIVE, read_chips  # noqa: E402

from deepage.blazeface import BlazeFace  # noqa: E402
from deepage.faces import BLAZE_TO_HOG, FaceAligner, Look, _iou, _reframe  # noqa: E402
from deepage.imageio import decode_image  # noqa: E402


def pairs(chips: list[tuple[str, bytes]]) -> list[tuple[np.ndarray, tuple, tuple]]:
    """(RGB chip, HOG box, BlazeFace box) wherever both found one face box that overlaps (IoU > 0.3)."""
    hog, blaze, out = FaceAligner(detector="dlib"), BlazeFace(), []
    for _, data in chips:
        rgb = decode_image(data)
        strong = [b for b, s in hog._raw_boxes(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), Look()) if s >= 0.5]
        found = [b for b, _ in blaze.detect(rgb)]
        if len(strong) == 1 and found and _iou(strong[0], found[0]) > 0.3:
            out.append((rgb, strong[0], found[0]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", default=str(ARCHIVE))
    parser.add_argument("--data", required=True, help="ingested HDF5 with the saved split")
    parser.add_argument("--n", type=int, default=400)
    args = parser.parse_args(argv)
    train = pairs(read_chips(Path(args.archive), args.n, 0, Path(args.data), split=0))
    rows = []
    for _, (a0, b0, a1, b1), (x0, y0, x1, y1) in train:
        w = x1 - x0
        rows.append(((a1 - a0) / w, ((a0 + a1) - (x0 + x1)) / 2 / w, ((b0 + b1) - (y0 + y1)) / 2 / w))
    rows = np.array(rows)
    q = np.percentile(rows, [25, 50, 75], axis=0)
    print(f"{len(train)} of {args.n} training chips with both boxes")
    for k, name in enumerate(("side", "dx", "dy")):
        print(f"  {name}: median {q[1, k]:.3f} (interquartile {q[0, k]:.3f}-{q[2, k]:.3f})")
    fitted = tuple(round(float(v), 3) for v in q[1])
    print(f"BLAZE_TO_HOG = {fitted}  (in deepage/faces.py now: {BLAZE_TO_HOG})")

    import dlib

    from deepage.faces import landmark_model_path

    shape = dlib.shape_predictor(str(landmark_model_path()))

    def landmarks(rgb: np.ndarray, box: tuple) -> np.ndarray:
        rect = dlib.rectangle(*(int(round(v)) for v in box[:2]), *(int(round(v)) - 1 for v in box[2:]))
        return np.array([(p.x, p.y) for p in shape(rgb, rect).parts()], float)

    val = pairs(read_chips(Path(args.archive), args.n, 1, Path(args.data), split=1))
    shifts = []
    for rgb, hog_box, blaze_box in val:
        a, b = landmarks(rgb, hog_box), landmarks(rgb, _reframe(blaze_box, fitted))
        eyes = np.linalg.norm(a[[0, 1]].mean(0) - a[[2, 3]].mean(0))
        shifts.append(np.linalg.norm(a - b, axis=1).mean() / eyes)
    q = np.percentile(shifts, [50, 90, 99])
    print(f"{len(val)} validation chips: landmark shift / eye distance median {q[0]:.3f}, 90th percentile "
          f"{q[1]:.3f}, 99th {q[2]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
