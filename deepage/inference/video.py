"""Video: one steady age per person. Faces are found in the frames by the :class:`Predictor`, followed from
frame to frame by a tracker, and each track's age is the running product of its frames' age distributions.

``deepage predict clip.mp4`` (any file OpenCV's ``VideoCapture`` reads, by suffix: :data:`VIDEO_SUFFIXES`;
``--camera 0`` for a camera) comes here from :mod:`deepage.inference.predict_cli`.

- **Tracking** (:class:`FaceTracker`): each processed frame's boxes are matched to the tracks' predicted
  boxes (last box moved by the track's velocity) by IoU, one to one (Hungarian assignment,
  ``scipy.optimize.linear_sum_assignment``); a box that matches no track (IoU below :data:`MIN_IOU`)
  starts one; a track unseen for ``max_missed`` processed frames ends. A plain matcher rather than
  ByteTrack or norfair, by measurement (``scripts/video_tracker_check.py``, 12 simulated sequences: fast
  motion with missed detections, gaps, two faces crossing, zoom; 15 people): 16 track ids, no two people
  on one; norfair 2.3: 15 with a centre-distance gate, 90 with its IoU distance; this matcher without the
  velocity: 64 and one merge. norfair also pins ``numpy<2`` and supervision 0.31 no longer has ByteTrack,
  so neither would come as a dependency without cost.
- **The age** (:class:`AgeFusion`): the log-probabilities of the track's frames are summed, so the estimate
  and its interval tighten as frames accrue. The frames of one face are far from independent photos (same
  light, same pose, the same "looks older than they are"), so a plain product soon becomes a spike that
  claims a certainty the model does not have. Two guards, both options: ``temperature`` (default
  :data:`DEFAULT_TEMPERATURE`): each frame after the first counts as ``1 / temperature`` of an independent
  photo; ``forget`` (default :data:`DEFAULT_FORGET`): older frames' weight decays by this factor per
  processed frame, so the track follows a face that turns or changes and its evidence is capped at
  ``1 / (1 - forget)`` frames (at most ``1 + 19 / 8`` photos' worth with the defaults). Measured on the
  clip of ``scripts/video_steadiness.py`` (one face, 60 jittered, noisy frames; the default model): the
  shown age changes by 1.78 years a frame on average without smoothing, 0.14 with it; the 10-90 % interval
  is 16.1 years wide after 1 frame, 12.0 after 10 and 9.4 after 50 (the plain product, ``temperature=1,
  forget=1``: 4.7 and 1.6, a certainty the model does not have). The defaults are a judgement, not a
  calibration: after many frames the interval is no longer a calibrated 80 % interval for the person's age.

Everything here is **RGB** ``uint8``; boxes are ``(x0, y0, x1, y1)`` frame pixels; times are seconds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..answers import AgeGate, p_at_least
from ..readout import INTERVAL_QUANTILES, age_quantiles, check_estimate, point_age
from .predictor import FacePrediction, Predictor

__all__ = ["VIDEO_SUFFIXES", "is_video", "AgeFusion", "Track", "FaceTracker", "VideoReader", "VideoReadError",
           "TrackedFace", "FrameResult", "track_video", "run_video", "predict_videos", "annotate_frame", "iou_matrix",
           "VIDEO_CSV_COLUMNS", "TRACK_COLUMNS", "DEFAULT_TEMPERATURE", "DEFAULT_FORGET",
           "DEFAULT_MAX_MISSED", "MIN_IOU"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp")
"""Suffixes (lower case) of the files ``deepage predict`` reads as videos."""

DEFAULT_TEMPERATURE = 8.0
"""Each frame after a track's first counts as an eighth of an independent photo (see the module's notes)."""
DEFAULT_FORGET = 0.95
"""Per processed frame, the weight left to the older frames: memory of about 20 frames."""
DEFAULT_MAX_MISSED = 10
"""Processed frames a track may go unseen before it ends."""
MIN_IOU = 0.3
"""Least IoU between a face's box and a track's predicted box for the face to continue the track."""

_FLOOR = 1e-12  # log(0) guard: a frame that rules an age out entirely cannot veto it for ever


def is_video(path: str | Path) -> bool:
    """Whether ``path`` is read as a video (by its suffix)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


# ---- the age of a track -----------------------------------------------------------------------------------
class AgeFusion:
    """A running product of age distributions over 0..100 years, tempered and forgetting.

    ``S_n = forget * S_(n-1) + log p_n`` and ``W_n = forget * W_(n-1) + 1`` (the frames' weight); the fused
    distribution is ``∝ exp(S_n / W_n * (1 + (W_n - 1) / temperature))``: the geometric mean of the frames,
    sharpened as if there were ``1 + (W_n - 1) / temperature`` independent photos. One frame gives back its
    own distribution; ``temperature=1, forget=1`` is the plain product. ``estimate``: how the fused
    distribution becomes one age, as the model's head does it (:data:`~deepage.readout.AGE_ESTIMATES`).

    >>> fusion = AgeFusion()
    >>> fusion.add(p)                  # p: (101,) one frame's age distribution    # doctest: +SKIP
    >>> fusion.age, fusion.interval                                                # doctest: +SKIP
    (31.2, (27.0, 35.1))
    """

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, forget: float = DEFAULT_FORGET,
                 estimate: str = "median") -> None:
        self.estimate = check_estimate(estimate)
        if temperature < 1:
            raise ValueError(f"temperature must be at least 1 (1: the plain product), got {temperature}")
        if not 0 < forget <= 1:
            raise ValueError(f"forget must be in (0, 1] (1: no forgetting), got {forget}")
        self.temperature = float(temperature)
        self.forget = float(forget)
        self.log_sum: np.ndarray | None = None  # (101,)
        self.weight = 0.0
        self.frames = 0

    def add(self, age_probs: np.ndarray) -> None:
        """One more frame's distribution ``(101,)``."""
        logp = np.log(np.maximum(np.asarray(age_probs, np.float64), _FLOOR))
        self.log_sum = logp if self.log_sum is None else self.forget * self.log_sum + logp
        self.weight = self.forget * self.weight + 1.0
        self.frames += 1

    @property
    def probs(self) -> np.ndarray:
        """The fused distribution ``(101,)`` float64 (sums to 1)."""
        if self.log_sum is None:
            raise ValueError("no frame added yet")
        strength = (1.0 + (self.weight - 1.0) / self.temperature) / self.weight
        z = self.log_sum * strength
        p = np.exp(z - z.max())
        return p / p.sum()

    @property
    def age(self) -> float:
        """The :attr:`estimate` (median or mean) of :attr:`probs`, in years."""
        return float(point_age(self.probs[None], self.estimate)[0])

    @property
    def interval(self) -> tuple[float, float]:
        """The :data:`INTERVAL_QUANTILES` (10th, 90th percentile) of :attr:`probs`, in years."""
        p = self.probs
        low, high = (float(age_quantiles(p, q)) for q in INTERVAL_QUANTILES)
        return low, high


# ---- tracking ---------------------------------------------------------------------------------------------
def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes ``a (N, 4)`` and ``b (M, 4)`` (``x0, y0, x1, y1``) → ``(N, M)``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)[:, None]
    b = np.asarray(b, np.float64).reshape(-1, 4)[None]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


@dataclass(eq=False)  # compared by identity
class Track:
    """One person followed through the video: ``track_id`` (from 1), its last ``box``, the frames and times
    it was first and last seen, ``frames_seen`` (processed frames with its face) and its :class:`AgeFusion`
    (no frame added for a model without an age distribution)."""

    track_id: int
    box: tuple[int, int, int, int]
    first_frame: int
    last_frame: int
    first_time: float
    last_time: float
    frames_seen: int = 1
    missed: int = 0
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4), repr=False)
    fusion: AgeFusion = field(default_factory=AgeFusion, repr=False)

    def predicted_box(self) -> np.ndarray:
        """Where the box should be now: the last box moved by the velocity over the frames since."""
        return np.asarray(self.box, np.float64) + self.velocity * (self.missed + 1)

    def summary(self, gate: AgeGate | None = None) -> dict:
        """The track as a row: :data:`TRACK_COLUMNS` (ages ``None`` without an age distribution). ``gate``:
        the model's minor/adult operating point, applied to the fused distribution (``p_adult``,
        ``decision``; ``None`` without one). Its thresholds were chosen on single photos: on a track's
        sharper distribution the stated error rates are not measured."""
        age = low = high = p_adult = decision = None
        if self.fusion.frames:
            age, (low, high) = self.fusion.age, self.fusion.interval
            if gate is not None:
                p_adult = float(p_at_least(self.fusion.probs, gate.adult_age))
                decision = str(gate.decide(np.array([p_adult]))[0])
        r = lambda v, nd=2: None if v is None else round(float(v), nd)  # noqa: E731
        return {"track_id": self.track_id, "first_frame": self.first_frame, "last_frame": self.last_frame,
                "first_time": r(self.first_time, 3), "last_time": r(self.last_time, 3),
                "frames_seen": self.frames_seen, "age": r(age), "age_low": r(low), "age_high": r(high),
                "adult_age": None if gate is None else gate.adult_age, "p_adult": r(p_adult, 4),
                "decision": decision}


class FaceTracker:
    """Boxes of each processed frame → track ids (see the module's notes).

    ``max_missed``: processed frames a track may go unseen before it ends; ``min_iou``: the least IoU for a
    box to continue a track; ``temperature``, ``forget``, ``estimate``: each track's :class:`AgeFusion`. :attr:`tracks`
    lists every track, ended or not, by id.
    """

    def __init__(self, max_missed: int = DEFAULT_MAX_MISSED, min_iou: float = MIN_IOU,
                 temperature: float = DEFAULT_TEMPERATURE, forget: float = DEFAULT_FORGET,
                 estimate: str = "median") -> None:
        if max_missed < 0:
            raise ValueError(f"max_missed must be at least 0, got {max_missed}")
        AgeFusion(temperature, forget, estimate)  # checks the three
        self.max_missed = int(max_missed)
        self.min_iou = float(min_iou)
        self.temperature, self.forget, self.estimate = float(temperature), float(forget), estimate
        self.live: list[Track] = []
        self.ended: list[Track] = []
        self.frames = 0  # processed frames
        self._next_id = 0  # the last track id given

    @property
    def tracks(self) -> list[Track]:
        return sorted(self.ended + self.live, key=lambda t: t.track_id)

    def _match(self, boxes: np.ndarray) -> dict[int, int]:
        """Box index → live-track index, one to one, each pair with IoU at least ``min_iou``."""
        from scipy.optimize import linear_sum_assignment

        if not len(boxes) or not self.live:
            return {}
        iou = iou_matrix(boxes, np.stack([t.predicted_box() for t in self.live]))
        rows, cols = linear_sum_assignment(-iou)
        return {int(r): int(c) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= self.min_iou}

    def update(self, boxes: Iterable, frame: int, time_s: float) -> list[Track]:
        """The track of each box ``(x0, y0, x1, y1)`` of one processed frame, in order; tracks not seen
        for more than ``max_missed`` processed frames end."""
        boxes = [tuple(int(v) for v in b) for b in boxes]
        self.frames += 1
        matched = self._match(np.asarray(boxes, np.float64).reshape(-1, 4))
        out: list[Track] = []
        for i, box in enumerate(boxes):
            if i in matched:
                track = self.live[matched[i]]
                step = (np.asarray(box, np.float64) - track.box) / (track.missed + 1)
                track.velocity = 0.5 * track.velocity + 0.5 * step  # smoothed: a detector's box jitters
                track.box, track.last_frame, track.last_time = box, frame, time_s
                track.frames_seen += 1
            else:
                self._next_id += 1
                track = Track(self._next_id, box, frame, frame, time_s, time_s,
                              fusion=AgeFusion(self.temperature, self.forget, self.estimate))
            out.append(track)
        seen = {id(t) for t in out}
        for track in self.live:
            if id(track) not in seen:
                track.missed += 1
        for track in out:
            track.missed = 0
        self.ended += [t for t in self.live if t.missed > self.max_missed]
        self.live = [t for t in self.live if t.missed <= self.max_missed] + [t for t in out if t not in self.live]
        return out


# ---- reading frames ---------------------------------------------------------------------------------------
class VideoReadError(ValueError):
    """A video that could not be opened, or that ended before its declared length; ``name``: which."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


class VideoReader:
    """Frames of a video file or a camera (``source``: a path, or an int camera index), RGB.

    ``frames(every)`` yields ``(index, time_s, rgb)`` for every ``every``-th frame (the others are grabbed,
    not decoded into RGB); a file that stops before the frame count it declares raises
    :class:`VideoReadError` after the frames read so far. ``time_s``: index / fps for a file, seconds since
    the first frame for a camera."""

    def __init__(self, source: str | Path | int) -> None:
        self.camera = isinstance(source, int)
        self.name = f"camera:{source}" if self.camera else str(source)
        if not self.camera and not Path(source).is_file():
            raise VideoReadError(self.name, "file not found")
        # FFmpeg's own log lines ("moov atom not found", ...) would bury the one line this module says;
        # read when OpenCV's FFmpeg backend first opens a file (set the variable yourself to see them)
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        previous = cv2.utils.logging.getLogLevel()  # errors only while opening: a missing camera is said in
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # one line below, not three
        try:
            self._cap = cv2.VideoCapture(source if self.camera else str(source))
        finally:
            cv2.utils.logging.setLogLevel(previous)
        if not self._cap.isOpened():
            what = "no camera with this index" if self.camera else "cannot open: not a video OpenCV reads, or damaged"
            raise VideoReadError(self.name, what)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else 30.0
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.declared_frames = int(count) if not self.camera and count and count > 0 else None
        self.frames_read = 0

    def frames(self, every: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        start = time.monotonic()
        index = 0
        while True:
            if index % every == 0:
                ok, bgr = self._cap.read()
            else:
                ok, bgr = self._cap.grab(), None
            if not ok:
                break
            self.frames_read = index + 1
            if bgr is not None:
                t = time.monotonic() - start if self.camera else index / self.fps
                yield index, t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
        declared = self.declared_frames
        # containers' counts can be estimates (from the duration): a few frames short is not damage
        if declared and index < declared - max(2, declared // 50):
            raise VideoReadError(self.name, f"the video ends after {index} of the {declared} frames it declares "
                                            "(truncated or damaged); the frames before are kept")
        if index == 0:
            raise VideoReadError(self.name, "no frame could be read (empty or damaged video)")

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the video through the predictor and the tracker ------------------------------------------------------
@dataclass(frozen=True)
class TrackedFace:
    """One face of one frame: the predictor's answer for this frame (``face``) and its track's age so far
    (``track_age``, ``track_age_low``, ``track_age_high``: ``None`` without an age distribution)."""

    face: FacePrediction
    track_id: int
    track_age: float | None
    track_age_low: float | None
    track_age_high: float | None

    def to_dict(self) -> dict:
        r = lambda v: None if v is None else round(float(v), 2)  # noqa: E731
        return {**self.face.to_dict(), "track_id": self.track_id, "track_age": r(self.track_age),
                "track_age_low": r(self.track_age_low), "track_age_high": r(self.track_age_high)}


@dataclass(frozen=True)
class FrameResult:
    """The faces (largest first) of one processed frame ``frame`` (index from 0) at ``time`` seconds;
    ``rgb``: the frame itself when asked for (``keep_frames``), else ``None``."""

    source: str
    frame: int
    time: float
    faces: list[TrackedFace]
    rgb: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"source": self.source, "frame": self.frame, "time": round(self.time, 3),
                "faces": [f.to_dict() for f in self.faces]}


def _tracked(tracker: FaceTracker, faces: list[FacePrediction], frame: int, t: float) -> list[TrackedFace]:
    out = []
    for face, track in zip(faces, tracker.update([f.box for f in faces], frame, t), strict=True):
        age = low = high = None
        if face.age_probs is not None:
            track.fusion.add(face.age_probs)
            age, (low, high) = track.fusion.age, track.fusion.interval
        out.append(TrackedFace(face, track.track_id, age, low, high))
    return out


def track_video(predictor: Predictor, reader: VideoReader, tracker: FaceTracker, every: int = 1,
                chunk: int = 8, keep_frames: bool = False) -> Iterator[FrameResult]:
    """A :class:`FrameResult` for every ``every``-th frame of ``reader``, in order, its faces tracked by
    ``tracker`` (whose :attr:`FaceTracker.tracks` hold the per-track answers afterwards). Frames go to the
    predictor ``chunk`` at a time (its worker processes, if any, share them; 1 for a camera: no lag).
    A video that breaks off yields every frame read, then raises :class:`VideoReadError`."""
    frames = reader.frames(every)
    while True:
        batch, error = [], None
        try:
            for item in frames:
                batch.append(item)
                if len(batch) >= chunk:
                    break
        except VideoReadError as exc:
            error = exc
        if batch:
            results = predictor.predict([rgb for _, _, rgb in batch])
            for (index, t, rgb), result in zip(batch, results, strict=True):
                if result.error:  # a frame too small to hold a face: said once, as the whole video's error
                    raise VideoReadError(reader.name, f"frame {index}: {result.error}")
                yield FrameResult(reader.name, index, t, _tracked(tracker, result.faces, index, t),
                                  rgb if keep_frames else None)
        if error is not None:
            raise error
        if len(batch) < chunk:
            return


# ---- deepage predict clip.mp4 -----------------------------------------------------------------------------
VIDEO_CSV_COLUMNS = ["source", "frame", "time", "track_id", "x0", "y0", "x1", "y1", "age", "age_low", "age_high",
                     "track_age", "track_age_low", "track_age_high", "detection_score"]
TRACK_COLUMNS = ["source", "track_id", "first_frame", "last_frame", "first_time", "last_time", "frames_seen",
                 "age", "age_low", "age_high", "adult_age", "p_adult", "decision"]

_COLOURS = [(0, 200, 0), (230, 120, 0), (0, 140, 255), (220, 0, 160), (0, 190, 190), (160, 160, 0)]  # RGB


def annotate_frame(result: FrameResult, rgb: np.ndarray) -> np.ndarray:
    """A copy of ``rgb`` with each face's box, track id and track age (interval) drawn, a colour per track."""
    out = rgb.copy()
    scale = max(0.4, min(out.shape[:2]) / 700)
    thick = max(1, round(scale * 2))
    for tf in result.faces:
        colour = _COLOURS[(tf.track_id - 1) % len(_COLOURS)]
        x0, y0, x1, y1 = tf.face.box
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, thick)
        text = f"#{tf.track_id}"
        if tf.track_age is not None:
            text += f" {tf.track_age:.0f} ({tf.track_age_low:.0f}-{tf.track_age_high:.0f})"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y0 - 4 if y0 - th - base - 4 >= 0 else min(out.shape[0] - base, y1 + th + 4)
        cv2.rectangle(out, (x0, ty - th - base), (x0 + tw, ty + base), colour, -1)
        cv2.putText(out, text, (x0, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def _f(v, nd: int = 2) -> str:
    return "" if v is None else f"{v:.{nd}f}"


def _frame_text(result: FrameResult, fmt: str) -> str | None:
    if fmt == "json":
        return json.dumps(result.to_dict())
    rows = [[result.source, result.frame, f"{result.time:.3f}", tf.track_id, *tf.face.box, _f(tf.face.age),
             _f(tf.face.age_low), _f(tf.face.age_high), _f(tf.track_age), _f(tf.track_age_low),
             _f(tf.track_age_high), _f(tf.face.detection_score, 3)] for tf in result.faces]
    if not rows:
        return None  # csv: one row per face
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().rstrip("\n")


def _track_line(source: str, row: dict) -> str:
    age = "" if row["age"] is None else f"  age {row['age']:.1f} [{row['age_low']:.1f}-{row['age_high']:.1f}]"
    gate = "" if row.get("decision") is None else \
        f"  {row['decision']} (P(age >= {row['adult_age']}) {row['p_adult']:.2f})"
    return (f"{source} track {row['track_id']}: frames {row['first_frame']}-{row['last_frame']} "
            f"({row['first_time']:.2f}-{row['last_time']:.2f} s), seen in {row['frames_seen']}{age}{gate}")


def _write_tracks(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            writer = csv.DictWriter(f, TRACK_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        else:
            f.writelines(json.dumps(row) + "\n" for row in rows)


def _video_writer(path: Path, fps: float, rgb: np.ndarray) -> cv2.VideoWriter:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = rgb.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"could not write the video {path} (OpenCV's mp4v writer)")
    return writer


def run_video(sources: list[str | Path | int], predictor: Predictor, fmt: str = "table", out=None,
              annotate: str | Path | None = None, tracks_path: str | Path | None = None, every: int = 1,
              max_missed: int = DEFAULT_MAX_MISSED, temperature: float = DEFAULT_TEMPERATURE,
              forget: float = DEFAULT_FORGET) -> int:
    """``deepage predict clip.mp4``: per-face rows of every ``every``-th frame to ``out`` (``fmt``: ``json``
    one object per processed frame, ``csv`` one row per face with :data:`VIDEO_CSV_COLUMNS` (header
    included), ``table``: no rows, only the tracks), then one line per track (to ``out`` for the table,
    else to stderr) and, with ``tracks_path``, the tracks as CSV (``.csv``) or JSON lines. ``annotate``: the
    processed frames with boxes, track ids and ages, as an mp4 at ``fps / every`` (with several sources,
    a folder of ``NAME.annotated.mp4``). A video that cannot be read or breaks off is said in one line; the
    frames before are kept. Returns 0, or 1 if any source failed."""
    out = out or sys.stdout
    if fmt == "csv":
        out.write(",".join(VIDEO_CSV_COLUMNS) + "\n")
    track_rows, failed = [], 0
    for source in sources:
        name = f"camera:{source}" if isinstance(source, int) else str(source)
        tracker = FaceTracker(max_missed, temperature=temperature, forget=forget, estimate=predictor.age_estimate)
        target = None if annotate is None else Path(annotate)
        if target is not None and len(sources) > 1:
            target = target / f"{Path(name.replace(':', '')).stem}.annotated.mp4"
        writer = None
        try:
            with VideoReader(source) as reader:
                for result in track_video(predictor, reader, tracker, every, chunk=1 if reader.camera else 8,
                                          keep_frames=target is not None):
                    if fmt != "table" and (text := _frame_text(result, fmt)) is not None:
                        out.write(text + "\n")
                        out.flush()
                    if target is not None:
                        writer = writer or _video_writer(target, reader.fps / every, result.rgb)
                        writer.write(cv2.cvtColor(annotate_frame(result, result.rgb), cv2.COLOR_RGB2BGR))
        except (VideoReadError, OSError) as exc:
            failed += 1
            print(f"deepage predict: {exc}", file=sys.stderr)
        finally:  # tracks and the annotated frames so far are kept, also on Ctrl-C
            if writer is not None:
                writer.release()
            rows = [{"source": name, **t.summary(predictor.age_gate)} for t in tracker.tracks]
            track_rows += rows
            for row in rows:
                print(_track_line(name, row), file=out if fmt == "table" else sys.stderr)
            if not rows and tracker.frames:
                print(f"{name}: no face found in {tracker.frames} frames", file=out if fmt == "table" else sys.stderr)
            if tracks_path is not None:
                _write_tracks(Path(tracks_path), track_rows)
    return 1 if failed else 0


def predict_videos(paths: list[str | Path], camera: int | None = None, model: str | Path | None = None,
                   fmt: str = "table", output: str | Path | None = None, annotate: str | Path | None = None,
                   tracks: str | Path | None = None, every: int = 1, max_missed: int = DEFAULT_MAX_MISSED,
                   detect: bool = True, backend: str = "auto", tta: bool = False, workers: int = 1) -> int:
    """:func:`run_video` for ``deepage predict``: video files (``paths``, all of them videos) and/or camera
    ``camera``; the model loaded as for photos (``model``: a checkpoint, ``None``: the bundled one); rows to
    ``output`` (refused if it exists and is not empty) or stdout."""
    photos = [str(p) for p in paths if not is_video(p)]
    if photos:
        raise ValueError(f"{photos[0]} is not a video ({' '.join(VIDEO_SUFFIXES)}): give videos or photos, "
                         "not both")
    if every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    sources: list[str | Path | int] = [*paths, *([] if camera is None else [int(camera)])]
    kw = {"backend": backend, "detect": detect, "tta": tta, "workers": workers}
    if output is not None:
        output = Path(output)
        if output.exists() and output.stat().st_size > 0:
            raise FileExistsError(f"{output} exists: remove it or write elsewhere")
        output.parent.mkdir(parents=True, exist_ok=True)
    with (open(output, "w", encoding="utf-8", newline="") if output is not None else nullcontext()) as out, \
            (Predictor.from_checkpoint(model, **kw) if model else Predictor.default(**kw)) as predictor:
        return run_video(sources, predictor, fmt=fmt, out=out, annotate=annotate, tracks_path=tracks,
                         every=every, max_missed=max_missed)
