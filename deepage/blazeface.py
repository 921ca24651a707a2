"""BlazeFace, MediaPipe's short-range face detector: the first and cheapest look of :class:`~deepage.faces.FaceAligner`.

The network (``assets/blazeface_short_range.onnx``, 0.4 MB, Apache-2.0) is MediaPipe 0.10.14's
``face_detection_short_range.tflite`` converted to ONNX (``scripts/convert_blazeface.py``). It takes one
``(1, 3, 128, 128)`` RGB image scaled to [-1, 1] and scores 896 anchors, each with a box and six keypoints
(``regressors (1, 896, 16)``, ``classificators (1, 896, 1)``). It runs on ONNX Runtime with one thread where
that is installed, else on OpenCV's DNN module (a core dependency; the same outputs to 1e-4, at ~2.5x the
time), so every install finds the same faces.

**Scales.** At 128 px it finds a UTKFace-style chip whose side is at least ~20 % of the photo's long side
(87 % of chips at 15 %, 94 % at 20 %, 99 % at 25 %; 100 chips pasted on a 640 px canvas; a chip is
~1.3 times the HOG box of its face). In a photo whose working side is at most :data:`TILE_ABOVE` that is
about every face the HOG detector's first look finds (boxes from 94 px). A larger photo is also read in
overlapping tiles of :data:`TILE_SIDE` working pixels (:func:`tiles`), in which an 80 px HOG box is a chip of
20 % of the side, so faces down to HOG's smallest are seen there too.

>>> detector = BlazeFace()                                  # doctest: +SKIP
>>> [(round(s, 2), b) for b, s in detector.detect(rgb)]     # doctest: +SKIP
[(0.92, (180.2, 82.4, 274.2, 176.4))]
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np

__all__ = ["BlazeFace", "MODEL_PATH", "INPUT_SIDE", "MIN_SCORE", "TILE_ABOVE", "TILE_SIDE", "anchors", "tiles"]

MODEL_PATH = Path(__file__).parent / "assets" / "blazeface_short_range.onnx"
INPUT_SIDE = 128
MIN_SCORE = 0.5
"""Lowest kept probability. On 300 UTKFace validation chips: 99.7 % found at 0.5, 79.0 % at 0.75."""
NMS_IOU = 0.3
TILE_ABOVE = 640
"""Photos whose working side (the long side, at most ``max_side``) is larger are also read in tiles."""
TILE_SIDE = 512
"""The tiles' side, in working pixels."""
TILE_OVERLAP = 0.2
"""Tiles overlap by this share of the photo's long side: a face that the whole-photo look is too coarse
for (a chip under ~20 % of that side) lies whole inside at least one tile."""
TILE_MIN_SCORE = 0.75
"""Lowest kept probability in a tile. In 50 of ``bench/predict_batch.py``'s real astronaut photos over 640 px,
the tiles' boxes away from her face numbered 96 at 0.5, 28 at 0.6, 6 at 0.7 and 2 at 0.75; UTKFace chips
pasted at 8 / 10 / 13 % of a 1280 x 960 canvas (HOG boxes from 80 px) were found in the tiles in 96 / 99 /
99 of 100 at 0.75 (99 / 100 / 100 at 0.5)."""
EDGE = 8
"""A tile's box within this many working pixels of one of the tile's inner edges is a cut face: dropped."""


@functools.lru_cache(maxsize=1)
def anchors() -> np.ndarray:
    """``(896, 2)`` anchor centres in [0, 1]: MediaPipe's SSD anchors for this model (strides 8 and 16 on a
    128 px input; 2 anchors per cell of the 16 x 16 map, 6 per cell of the 8 x 8 map; fixed size 1)."""
    centres = []
    for stride, per_cell in ((8, 2), (16, 6)):
        cells = INPUT_SIDE // stride
        for y in range(cells):
            for x in range(cells):
                centres += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    return np.asarray(centres, np.float32)


def tiles(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px with at least ``overlap`` px shared by
    neighbours (``[0]`` when one tile covers it)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / max(1, tile - overlap)) + 1
    return [round(k * (length - tile) / (count - 1)) for k in range(count)]


class _Runner:
    """The network on ONNX Runtime (one thread) or OpenCV's DNN module: ``(1, 3, 128, 128)`` float32 →
    ``(regressors (896, 16), scores (896,))``."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"BlazeFace model {path} is missing (it ships in deepage/assets)")
        self.ort = None
        if importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            # One thread: it runs inside the face-finding worker processes, one per core.
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            self.ort = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        else:
            self.net = cv2.dnn.readNetFromONNX(str(path))

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.ort is not None:
            regressors, logits = self.ort.run(["regressors", "classificators"], {"input": x})
        else:
            self.net.setInput(x)
            logits, regressors = self.net.forward(["classificators", "regressors"])
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[0, :, 0], -80.0, 80.0)))
        return regressors[0], scores


@functools.lru_cache(maxsize=2)
def _runner(path: str) -> _Runner:
    """One network per process and model file (read-only once built)."""
    return _Runner(Path(path))


class BlazeFace:
    """Face boxes ``(x0, y0, x1, y1)`` with probabilities, from the whole photo and, in a large one, tiles.

    ``min_score``: the lowest probability kept. ``max_side``: photos are handled as if shrunk to this side
    (the tiles are :data:`TILE_SIDE` of those pixels), like :class:`~deepage.faces.FaceAligner`'s HOG looks.
    Picklable: the network is built on first use in each process.
    """

    def __init__(self, path: str | Path = MODEL_PATH, min_score: float = MIN_SCORE, max_side: int = 1280) -> None:
        self.path, self.min_score, self.max_side = str(path), float(min_score), int(max_side)

    @staticmethod
    def available(path: str | Path = MODEL_PATH) -> bool:
        return Path(path).is_file()

    def _look(self, rgb: np.ndarray, x0: int, y0: int, side: int,
              min_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes (K, 4), scores (K,))``: the anchors scoring at least ``min_score`` (default: the
        detector's) in the square region of side ``side`` at ``(x0, y0)`` of ``rgb`` (the region may run past
        the photo's right or bottom edge: black there, as MediaPipe's letterbox), boxes in photo pixels."""
        region = rgb[y0:y0 + side, x0:x0 + side]
        scale = INPUT_SIDE / side
        h, w = region.shape[:2]
        small = cv2.resize(region, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        canvas = np.zeros((INPUT_SIDE, INPUT_SIDE, 3), np.uint8)
        canvas[:small.shape[0], :small.shape[1]] = small
        x = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) * (1 / 127.5) - 1.0
        regressors, scores = _runner(self.path)(x)
        keep = np.flatnonzero(scores >= max(self.min_score, min_score or 0.0))
        r = regressors[keep, :4] / INPUT_SIDE  # centre offset and size, in units of the input side
        centre = anchors()[keep] + r[:, :2]
        boxes = np.concatenate([centre - r[:, 2:] / 2, centre + r[:, 2:] / 2], axis=1) * side + [x0, y0, x0, y0]
        return boxes, scores[keep]

    def detect(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """``rgb`` ``(H, W, 3)`` uint8 RGB → boxes in its pixels with probabilities, best first, overlapping
        ones (IoU > 0.3) merged into the best of them. A tile's box that reaches one of the tile's inner
        edges (:data:`EDGE`) is dropped: that face is cut, and lies whole in a neighbouring tile or in the
        whole-photo look."""
        h, w = rgb.shape[:2]
        shrink = min(1.0, self.max_side / max(h, w))
        if shrink < 1.0:  # once, for the whole look and every tile
            rgb = cv2.resize(rgb, (max(1, round(w * shrink)), max(1, round(h * shrink))), interpolation=cv2.INTER_AREA)
            h, w = rgb.shape[:2]
        looks = [self._look(rgb, 0, 0, max(h, w))]
        if max(h, w) > TILE_ABOVE:
            overlap = round(TILE_OVERLAP * max(h, w))
            for y0 in tiles(h, TILE_SIDE, overlap):
                for x0 in tiles(w, TILE_SIDE, overlap):
                    boxes, scores = self._look(rgb, x0, y0, TILE_SIDE, TILE_MIN_SCORE)
                    # inner edges only: a face cut by the photo's own edge has no other tile to be whole in
                    cut = (((x0 > 0) & (boxes[:, 0] <= x0 + EDGE)) | ((y0 > 0) & (boxes[:, 1] <= y0 + EDGE))
                           | ((x0 + TILE_SIDE < w) & (boxes[:, 2] >= x0 + TILE_SIDE - EDGE))
                           | ((y0 + TILE_SIDE < h) & (boxes[:, 3] >= y0 + TILE_SIDE - EDGE)))
                    looks.append((boxes[~cut], scores[~cut]))
        boxes = np.concatenate([b for b, _ in looks])
        scores = np.concatenate([s for _, s in looks])
        kept = _suppress(boxes, scores)
        return [(tuple(float(v) / shrink for v in boxes[k]), float(scores[k])) for k in kept]


def _suppress(boxes: np.ndarray, scores: np.ndarray) -> list[int]:
    """Greedy non-maximum suppression: indices of ``boxes (K, 4)``, best ``scores`` first, each overlapping
    no better kept box by more than :data:`NMS_IOU`."""
    order = list(np.argsort(-scores, kind="stable"))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=int)
        kept.append(int(best))
        if not len(rest):
            break
        ix = np.clip(np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]), 0, None)
        iy = np.clip(np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]), 0, None)
        inter = ix * iy
        order = list(rest[inter / (area[best] + area[rest] - inter) <= NMS_IOU])
    return kept
