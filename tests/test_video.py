"""Video: tracks across frames, one steady age per person; clips made here from the bundled photo."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepage.cli import main
from deepage.inference.video import AgeFusion, FaceTracker, VideoReader, VideoReadError

ASTRONAUT = Path(__file__).resolve().parents[1] / "deepage" / "assets" / "astronaut.jpg"
SIZE = (320, 240)  # (w, h): the head at half scale gives a ~55 px face, which the HOG looks find


def make_clip(path: Path, frames: int = 60, second_from: int | None = None, face: bool = True,
              fourcc: str = "mp4v", seed: int = 0) -> Path:
    """The photo's head drifting right and growing over ``frames`` frames with pixel noise; from frame
    ``second_from`` on, its mirror image on the right as a second person. BGR frames, as OpenCV writes."""
    rng = np.random.default_rng(seed)
    head = cv2.imread(str(ASTRONAUT))[20:260, 110:340]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 15, SIZE)
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((SIZE[1], SIZE[0], 3), 110, np.uint8)
        t = i / max(1, frames - 1)
        people = [(head, 0.5 + 0.1 * t, 10 + 40 * t, 10)] if face else []
        if second_from is not None and i >= second_from:
            people.append((cv2.flip(head, 1), 0.55, 180, 20))
        for img, scale, x, y in people:
            m = np.float32([[scale, 0, x], [0, scale, y]])
            inside = cv2.warpAffine(np.full(img.shape[:2], 255, np.uint8), m, SIZE) > 0
            frame[inside] = cv2.warpAffine(img, m, SIZE)[inside]
        writer.write(np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8))
    writer.release()
    return path


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- the age of a track and the matcher: exact, no model ---------------------------------------------------
def _gauss(mu: float, sigma: float) -> np.ndarray:
    p = np.exp(-0.5 * ((np.arange(101) - mu) / sigma) ** 2)
    return p / p.sum()


def test_fusion_one_frame_is_that_frame_and_plain_product_is_the_product():
    p, q = _gauss(30, 6), _gauss(36, 6)
    one = AgeFusion()
    one.add(p)
    np.testing.assert_allclose(one.probs, p, atol=1e-12)
    plain = AgeFusion(temperature=1, forget=1)
    plain.add(p)
    plain.add(q)
    np.testing.assert_allclose(plain.probs, p * q / (p * q).sum(), atol=1e-12)
    assert plain.age == pytest.approx(33.0, abs=1e-6)  # two equal Gaussians: the mean of their means


def test_fusion_tightens_but_the_defaults_guard_against_a_spike():
    default, plain = AgeFusion(), AgeFusion(temperature=1, forget=1)
    widths = []
    for k in range(50):
        for f in (default, plain):
            f.add(_gauss(30 + (k % 3) - 1, 6))
        widths.append(np.subtract(*default.interval[::-1]))
    single = widths[0]
    assert widths[0] > widths[9] > widths[49]  # tightens as frames accrue
    assert widths[49] > 0.35 * single  # 1 + 19/8 photos' worth at most: sigma / sqrt(3.4)
    plain_width = np.subtract(*plain.interval[::-1])
    assert plain_width < 0.2 * single  # the plain product: sigma / sqrt(50)
    with pytest.raises(ValueError, match="temperature"):
        AgeFusion(temperature=0.5)
    with pytest.raises(ValueError, match="forget"):
        AgeFusion(forget=0)


def test_a_track_gets_the_minor_adult_decision_of_its_fused_distribution():
    from deepage.answers import AgeGate
    from deepage.inference.video import Track

    gate = AgeGate(adult_age=18, adult_threshold=0.9, minor_threshold=0.2, max_minors_passed=0.01,
                   max_adults_held=0.05, minors_passed=0.0, adults_held=0.0, unsure=0.0, n_minors=1, n_adults=1)
    rows = {}
    for mu in (10, 17.5, 40):
        track = Track(track_id=1, box=(0, 0, 10, 10), first_frame=0, last_frame=0, first_time=0.0, last_time=0.0)
        track.fusion.add(_gauss(mu, 2.0))
        rows[mu] = track.summary(gate)
    assert [rows[mu]["decision"] for mu in (10, 17.5, 40)] == ["minor", "unsure", "adult"]
    p = _gauss(17.5, 2.0)
    assert rows[17.5]["p_adult"] == pytest.approx(p[18:].sum(), abs=1e-4) and rows[17.5]["adult_age"] == 18
    assert track.summary()["decision"] is None and track.summary()["p_adult"] is None


def test_tracker_ids_match_and_end_after_k_missed_frames():
    tracker = FaceTracker(max_missed=2)
    a, b = (10, 10, 60, 60), (200, 10, 250, 60)
    ids = [t.track_id for t in tracker.update([a, b], 0, 0.0)]
    assert ids == [1, 2]  # two new faces in one frame: two ids
    ids = [t.track_id for t in tracker.update([(204, 12, 254, 62), (13, 11, 63, 61)], 1, 0.1)]
    assert ids == [2, 1]  # matched by overlap, whatever the order
    for k in range(2, 5):  # face 2 unseen for 3 frames: more than max_missed
        tracker.update([(10 + 3 * k, 10, 60 + 3 * k, 60)], k, 0.1 * k)
    assert [t.track_id for t in tracker.update([(204, 12, 254, 62)], 5, 0.5)] == [3]  # a new track
    assert [(t.track_id, t.frames_seen, t.first_frame, t.last_frame) for t in tracker.tracks] == \
        [(1, 5, 0, 4), (2, 2, 0, 1), (3, 1, 5, 5)]


# ---- deepage predict clip.mp4 -------------------------------------------------------------------------------
def test_one_face_one_steady_track(tmp_path, capsys):
    clip = make_clip(tmp_path / "clip.mp4", frames=60)
    rows, tracks, annotated = tmp_path / "rows.csv", tmp_path / "tracks.csv", tmp_path / "out.mp4"
    rc = main(["predict", str(clip), "--every", "2", "--format", "csv", "-o", str(rows), "--tracks", str(tracks),
               "--annotate", str(annotated), "--backend", "torch"])
    assert rc == 0
    faces = _csv(rows)
    assert len(faces) == 30 and {r["track_id"] for r in faces} == {"1"}
    assert [int(r["frame"]) for r in faces] == list(range(0, 60, 2))
    raw = np.array([float(r["age"]) for r in faces])
    shown = np.array([float(r["track_age"]) for r in faces])
    assert np.abs(np.diff(shown)).mean() < 0.5 * np.abs(np.diff(raw)).mean()  # steadier than each frame's
    width = np.array([float(r["track_age_high"]) - float(r["track_age_low"]) for r in faces])
    assert width[-1] < 0.8 * width[0]
    (summary,) = _csv(tracks)
    assert summary["track_id"] == "1" and summary["frames_seen"] == "30"
    assert (summary["first_frame"], summary["last_frame"]) == ("0", "58")
    assert float(summary["last_time"]) == pytest.approx(58 / 15, abs=1e-3)
    assert float(summary["age"]) == pytest.approx(shown[-1], abs=0.01)
    assert "clip.mp4 track 1: frames 0-58" in capsys.readouterr().err
    cap = cv2.VideoCapture(str(annotated))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30  # the processed frames
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(7.5)


def test_a_second_face_entering_halfway_gets_a_second_track(tmp_path, capsys):
    clip = make_clip(tmp_path / "two.avi", frames=60, second_from=30, fourcc="MJPG")
    rc = main(["predict", str(clip), "--every", "5", "--format", "json", "--backend", "torch"])
    assert rc == 0
    frames = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [f["frame"] for f in frames] == list(range(0, 60, 5))
    ids = [sorted(face["track_id"] for face in f["faces"]) for f in frames]
    assert ids == [[1]] * 6 + [[1, 2]] * 6
    face = frames[-1]["faces"][0]
    assert {"box", "age", "age_low", "age_high", "track_age", "track_age_low", "track_age_high"} <= set(face)
    assert "age_probs" not in face  # kept in memory for the track, not written


def test_a_clip_without_faces(tmp_path, capsys):
    clip = make_clip(tmp_path / "empty.mp4", frames=20, face=False)
    rc = main(["predict", str(clip), "--every", "4", "--backend", "torch"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.strip() == f"{clip}: no face found in 5 frames"


def test_a_damaged_file_is_one_line_and_a_truncated_one_keeps_its_frames(tmp_path, capsys):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert main(["predict", str(junk), "--format", "csv", "--backend", "torch"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"deepage predict: {junk}: cannot open: not a video OpenCV reads, or damaged"
    assert captured.out.strip() == "source,frame,time,track_id,x0,y0,x1,y1,age,age_low,age_high,track_age," \
                                   "track_age_low,track_age_high,detection_score"

    whole = make_clip(tmp_path / "whole.avi", frames=40, fourcc="MJPG").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole[: len(whole) // 2])
    assert main(["predict", str(cut), "--every", "3", "--format", "csv", "--backend", "torch"]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "track" not in line]
    assert len(errors) == 1 and "of the 40 frames it declares (truncated or damaged)" in errors[0]
    rows = list(csv.DictReader(captured.out.splitlines()))
    assert len(rows) >= 4 and {r["track_id"] for r in rows} == {"1"}  # the frames read before the break
    assert f"{cut} track 1: frames 0-" in captured.err


def test_reader_errors_and_requests_that_are_not_for_videos(tmp_path):
    with pytest.raises(VideoReadError, match="file not found"):
        VideoReader(tmp_path / "missing.mp4")
    clip = make_clip(tmp_path / "c.mp4", frames=3)
    with pytest.raises(ValueError, match="every"):
        next(VideoReader(clip).frames(every=0))
    assert main(["predict", str(clip), str(ASTRONAUT)]) == 2  # videos or photos, not both
    assert main(["predict", str(clip), "--skip-existing", "-o", str(tmp_path / "x.csv")]) == 2
