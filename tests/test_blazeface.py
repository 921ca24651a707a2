"""BlazeFace, the aligner's first look (deepage.blazeface), on the bundled public-domain photo."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from deepage import blazeface
from deepage.blazeface import TILE_ABOVE, TILE_SIDE, BlazeFace, anchors, tiles
from deepage.faces import FaceAligner, Look

ASTRONAUT = Path(__file__).resolve().parents[1] / "deepage" / "assets" / "astronaut.jpg"
FACE_BOX = (179, 83, 267, 171)  # her face, checked by eye on the annotated photo (as in test_faces.py)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_anchors_cover_the_input():
    a = anchors()
    assert a.shape == (896, 2) and a.min() > 0 and a.max() < 1
    assert np.allclose(a[0], (0.5 / 16, 0.5 / 16)) and np.allclose(a[-1], (7.5 / 8, 7.5 / 8))


@pytest.mark.parametrize("length,tile,overlap", [(1280, 640, 320), (1000, 640, 250), (2000, 500, 400),
                                                 (641, 640, 100)])
def test_tiles_cover_the_side_with_the_overlap(length, tile, overlap):
    starts = tiles(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))
    assert tiles(500, 640, 100) == [0] and tiles(1280, 640, 320) == [0, 320, 640]


def test_suppression_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], float)
    assert blazeface._suppress(boxes, np.array([0.6, 0.9, 0.7, 0.5])) == [1, 2]
    assert blazeface._suppress(np.zeros((0, 4)), np.zeros(0)) == []


def test_finds_her_face_and_nothing_else(astronaut):
    found = BlazeFace().detect(astronaut)
    assert len(found) == 1
    box, score = found[0]
    assert _iou(box, FACE_BOX) > 0.7 and 0.5 <= score <= 1.0


def test_no_face_in_a_plain_or_noisy_image_or_in_coins():
    from skimage import data

    rng = np.random.default_rng(0)
    detector = BlazeFace()
    assert detector.detect(np.full((300, 400, 3), 120, np.uint8)) == []
    assert detector.detect(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)) == []
    assert detector.detect(np.ascontiguousarray(np.stack([data.coins()] * 3, -1))) == []


def test_opencv_dnn_gives_the_same_boxes_as_onnx_runtime(astronaut, monkeypatch):
    pytest.importorskip("onnxruntime")  # the comparison needs both; without it OpenCV is the only path
    with_ort = BlazeFace().detect(astronaut)
    monkeypatch.setattr(blazeface.importlib.util, "find_spec", lambda name: None)
    blazeface._runner.cache_clear()
    try:
        with_opencv = BlazeFace().detect(astronaut)
        assert blazeface._runner(str(blazeface.MODEL_PATH)).ort is None
    finally:
        blazeface._runner.cache_clear()
    assert len(with_opencv) == len(with_ort) == 1
    np.testing.assert_allclose(with_opencv[0][0], with_ort[0][0], atol=0.05)
    assert with_opencv[0][1] == pytest.approx(with_ort[0][1], abs=1e-4)


def test_a_small_face_in_a_large_photo_is_found_in_a_tile(astronaut):
    """Her face (88 px) in a 1600 x 1200 photo is too small for the whole-photo look (128 px for 1600: 7 px)
    and found in a tile; a face twice as large in the same photo is found too, once."""
    photo = np.full((1200, 1600, 3), 90, np.uint8)
    photo[600:1112, 1000:1512] = astronaut  # her face: ~88 px
    photo[0:600, 0:600] = cv2.resize(astronaut, None, fx=2.0, fy=2.0)[100:700, 300:900]  # her face: 176 px
    detector = BlazeFace()
    whole, _ = detector._look(photo, 0, 0, 1600)
    small_face = (1000 + 179, 600 + 83, 1000 + 267, 600 + 171)
    assert not any(_iou(b, small_face) > 0.5 for b in whole)
    found = [b for b, _ in detector.detect(photo)]
    assert any(_iou(b, small_face) > 0.6 for b in found)
    big_face = tuple(2 * v - d for v, d in zip(FACE_BOX, (300, 100, 300, 100), strict=True))
    assert any(_iou(b, big_face) > 0.6 for b in found)
    assert len(found) == 2  # merged across the whole-photo look and the overlapping tiles


def test_a_photo_up_to_the_tiling_side_is_read_once(astronaut, monkeypatch):
    calls = []
    detector = BlazeFace()
    real = detector._look
    monkeypatch.setattr(detector, "_look",
                        lambda rgb, x0, y0, side, *a: calls.append(side) or real(rgb, x0, y0, side, *a))
    detector.detect(cv2.resize(astronaut, (TILE_ABOVE, TILE_ABOVE)))
    assert calls == [TILE_ABOVE]
    calls.clear()
    detector.detect(cv2.resize(astronaut, (1280, 640)))  # the whole photo, then 4 x 2 tiles of 512 px
    assert calls == [1280] + [TILE_SIDE] * 8
    calls.clear()
    detector.detect(cv2.resize(astronaut, (2560, 1280)))  # handled as if shrunk to max_side (1280): same tiles
    assert calls == [1280] + [TILE_SIDE] * 8


def test_the_default_aligner_reads_blazeface_first_and_frames_the_chip_like_hog(astronaut, monkeypatch):
    default, hog = FaceAligner(), FaceAligner(detector="dlib")
    assert default.method == "blaze+dlib+landmarks" and hog.method == "dlib+landmarks"
    looks = []
    raw = default._raw_boxes
    monkeypatch.setattr(default, "_raw_boxes", lambda rgb, look=Look(): looks.append(look) or raw(rgb, look))
    by_blaze, by_hog = default.detect(astronaut), hog.detect(astronaut)
    assert looks == []  # BlazeFace found her: no HOG look ran
    assert len(by_blaze) == len(by_hog) == 1
    # the landmark model, started from BlazeFace's box moved onto HOG's, puts the points where it puts them
    # from HOG's own box
    assert np.abs(by_blaze[0].landmarks - by_hog[0].landmarks).max() < 2.0
    assert np.abs(by_blaze[0].chip.astype(int) - by_hog[0].chip.astype(int)).mean() < 6.0


def test_a_small_photo_gets_the_hog_looks_first_and_blazeface_last(astronaut, monkeypatch):
    chip = FaceAligner(detector="dlib").align_largest(astronaut)  # 200 x 200, framed as UTKFace's chips
    aligner = FaceAligner()
    aligner._build()
    calls = []
    real = aligner._objects["blaze"].detect
    monkeypatch.setattr(aligner._objects["blaze"], "detect", lambda rgb: calls.append(rgb.shape) or real(rgb))
    assert len(aligner.detect(chip)) == 1 and calls == []  # found by HOG: BlazeFace never ran
    monkeypatch.setattr(aligner, "_boxes", lambda rgb: [])  # HOG and the Haar second chance find nothing
    faces = aligner.detect(chip)
    assert calls == [chip.shape] and len(faces) == 1 and 0.5 <= faces[0].score <= 1.0


def test_the_hog_looks_run_where_blazeface_finds_nothing(astronaut, monkeypatch):
    aligner = FaceAligner()
    aligner._build()
    monkeypatch.setattr(aligner._objects["blaze"], "detect", lambda rgb: [])
    faces = aligner.detect(astronaut)
    assert len(faces) == 1 and _iou(faces[0].box, FACE_BOX) > 0.6 and faces[0].score > 1.0  # a HOG margin
