"""Does the video path's plain IoU matcher keep identities as well as a library tracker?

Feeds the same simulated face boxes (ground-truth person known) to :class:`deepage.inference.video.FaceTracker`
(with its constant-velocity prediction, and without it) and, when it is importable, to norfair's ``Tracker``
(IoU distance, and centre distance under 60 px), and counts per sequence the track ids given, the extra ids
per person (fragments) and the persons sharing an id (merges). Sequences, 60 processed frames each, seeds
0-2: ``fast`` (a face moving 0.45 box widths per processed frame, 10 % of detections missed), ``gaps``
(unseen 5 frames in every 15 while moving), ``cross`` (two faces crossing; the one behind unseen while they
overlap), ``zoom`` (a face growing 3 % a frame). No model runs: it takes a second.

    .venv/bin/python scripts/video_tracker_check.py      # norfair columns need: pip install norfair
"""

from __future__ import annotations

import numpy as np

from deepage.inference.video import FaceTracker, Track


def simulate(kind: str, n: int = 60, seed: int = 0) -> list[list[tuple[tuple, int]]]:
    """Per frame: ``[(box, person), ...]``."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        dets: list[tuple[tuple, int]] = []

        def face(cx, cy, side, person, p_miss=0.0, jitter=2.0, dets=dets):
            if rng.random() >= p_miss:
                box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]) + rng.normal(0, jitter, 4)
                dets.append((tuple(int(v) for v in box), person))

        if kind == "fast":
            face(40 + 30 * i, 200, 66, 0, p_miss=0.1, jitter=3)
        elif kind == "gaps":
            if i % 15 < 10:
                face(50 + 8 * i, 200, 70, 0)
        elif kind == "cross":
            xa, xb = 60 + 8 * i, 540 - 8 * i
            face(xa, 200, 80, 0)
            if abs(xa - xb) > 60:
                face(xb, 210, 70, 1)
        elif kind == "zoom":
            face(300, 240, 60 * 1.03 ** i, 0)
        frames.append(dets)
    return frames


def run_ours(frames, motion: bool = True) -> list[list[tuple[int, int]]]:
    tracker = FaceTracker(max_missed=10)
    if not motion:  # the same matcher on the last box as it was
        tracker_box = Track.predicted_box
        Track.predicted_box = lambda self: np.asarray(self.box, np.float64)
    try:
        return [[(t.track_id, p) for t, (_, p) in zip(tracker.update([b for b, _ in d], k, 0.0), d, strict=True)]
                for k, d in enumerate(frames)]
    finally:
        if not motion:
            Track.predicted_box = tracker_box


def run_norfair(frames, distance: str, threshold: float) -> list[list[tuple[int | None, int]]]:
    from norfair import Detection, Tracker

    tracker = Tracker(distance_function=distance, distance_threshold=threshold, hit_counter_max=10,
                      initialization_delay=0)
    out = []
    for d in frames:
        dets = [Detection(points=np.array([[b[0], b[1]], [b[2], b[3]]], float), data=p) for b, p in d]
        objects = tracker.update(dets)
        out.append([(next((o.id for o in objects if o.last_detection is x), None), x.data) for x in dets])
    return out


def score(assigned) -> str:
    by_person, by_id = {}, {}
    for row in assigned:
        for tid, person in row:
            by_person.setdefault(person, set()).add(tid)
            by_id.setdefault(tid, set()).add(person)
    fragments = sum(len(s) - 1 for s in by_person.values())
    merges = sum(len(s) - 1 for s in by_id.values())
    return f"{len(by_id):2d} ids/{len(by_person)} fr {fragments:2d} mg {merges}"


def main() -> None:
    try:
        import logging

        import norfair  # noqa: F401

        logging.getLogger().setLevel(logging.ERROR)  # norfair warns about scalar distances
        have_norfair = True
    except ImportError:
        have_norfair = False
    head = f"{'sequence':10s} | {'IoU + velocity':18s} | {'IoU, last box':18s}"
    print(head + (f" | {'norfair IoU':18s} | norfair centre<60px" if have_norfair else ""))
    for kind in ("fast", "gaps", "cross", "zoom"):
        for seed in range(3):
            frames = simulate(kind, seed=seed)
            cols = [score(run_ours(frames)), score(run_ours(frames, motion=False))]
            if have_norfair:
                cols += [score(run_norfair(frames, "iou", 0.7)), score(run_norfair(frames, "mean_euclidean", 60))]
            print(f"{kind + ' ' + str(seed):10s} | " + " | ".join(f"{c:18s}" for c in cols))


if __name__ == "__main__":
    main()
