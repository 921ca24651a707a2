"""How steady is the age shown for one person in a video, with and without the track's smoothing?

Makes a clip from the bundled photo (``deepage/assets/astronaut.jpg``): 60 frames of 320 x 240 in which the
head drifts and grows, each frame with its own small random shift, scale, brightness and pixel noise, as a
hand-held camera gives. Runs ``deepage predict``'s video path on it (bundled model) and prints, for the
age shown per frame (the frame's own answer; the track's with the default smoothing; the plain product of
the distributions): the mean and largest frame-to-frame change, and the 10-90 % interval width after 1, 10
and 50 frames.

    nice -n 19 .venv/bin/python scripts/video_steadiness.py [--frames 60] [--every 1] [--keep clip.mp4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from deepage.inference.predictor import Predictor
from deepage.inference.video import AgeFusion, FaceTracker, VideoReader, track_video

ASTRONAUT = Path(__file__).resolve().parents[1] / "deepage" / "assets" / "astronaut.jpg"


def make_clip(path: Path, frames: int = 60, size: tuple[int, int] = (320, 240), fps: float = 15,
              seed: int = 0) -> Path:
    """The photo's head drifting right and growing, with per-frame jitter and noise (mp4v)."""
    rng = np.random.default_rng(seed)
    head = cv2.imread(str(ASTRONAUT))[20:260, 110:340]  # BGR, head and shoulders
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        t = i / max(1, frames - 1)
        scale = (0.5 + 0.15 * t) * rng.uniform(0.97, 1.03)
        x, y = 20 + 60 * t + rng.normal(0, 2), 10 + rng.normal(0, 2)
        m = np.float32([[scale, 0, x], [0, scale, y]])
        frame = cv2.warpAffine(head, m, size, borderValue=(110, 110, 110)).astype(np.float32)
        frame = frame * rng.uniform(0.9, 1.1) + rng.normal(0, 8, frame.shape)
        writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    writer.release()
    return path


def steadiness(ages: list[float]) -> str:
    d = np.abs(np.diff(ages))
    return f"mean {d.mean():.2f}, largest {d.max():.2f} years"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--keep", default=None, help="also keep the clip here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(args.keep or Path(tmp) / "clip.mp4"), args.frames)
        tracker = FaceTracker()
        with VideoReader(clip) as reader:
            results = list(track_video(Predictor.default(), reader, tracker, every=args.every))
    faces = [r.faces[0] for r in results if r.faces]
    print(f"{len(results)} frames processed, {sum(bool(r.faces) for r in results)} with a face, "
          f"{len(tracker.tracks)} track(s)")
    plain = AgeFusion(temperature=1, forget=1)
    shown = {"frame's own answer": [], "track, default smoothing": [], "track, plain product": []}
    widths = {k: [] for k in shown}
    for f in faces:
        plain.add(f.face.age_probs)
        low, high = plain.interval
        for key, (age, lo, hi) in zip(shown, [(f.face.age, f.face.age_low, f.face.age_high),
                                              (f.track_age, f.track_age_low, f.track_age_high),
                                              (plain.age, low, high)], strict=True):
            shown[key].append(age)
            widths[key].append(hi - lo)
    marks = [n for n in (1, 10, 50) if n <= len(faces)]
    for key in shown:
        width = ", ".join(f"{widths[key][n - 1]:.1f} after {n}" for n in marks)
        print(f"{key:26s} change per frame: {steadiness(shown[key])}; interval width: {width}; "
              f"last age {shown[key][-1]:.1f}")


if __name__ == "__main__":
    main()
