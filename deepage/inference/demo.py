"""``deepage demo``: the bundled model on the bundled photo (``assets/astronaut.jpg``; public domain)."""

from __future__ import annotations

import sys
from pathlib import Path

from .predictor import Predictor

__all__ = ["run_demo", "DEMO_PHOTO"]

DEMO_PHOTO = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"


def run_demo() -> int:
    """Find the face in the bundled photo and print its age, interval and age groups. Returns the exit
    status: 1 (with a message) when the bundled model or photo is missing, or no face is found."""
    try:
        predictor = Predictor.default()
    except FileNotFoundError as exc:
        print(f"deepage demo: {exc}\nTo try a model of your own: deepage predict {DEMO_PHOTO} --model CKPT",
              file=sys.stderr)
        return 1
    result = predictor.predict_one(DEMO_PHOTO)
    if result.error:
        print(f"deepage demo: {result.source}: {result.error}", file=sys.stderr)
        return 1
    if not result.faces:
        print(f"deepage demo: no face found in {DEMO_PHOTO}", file=sys.stderr)
        return 1
    face = result.faces[0]
    print(f"photo: {DEMO_PHOTO.name} ({result.width}x{result.height}, NASA, public domain); "
          f"model: {predictor.spec.name} ({predictor.spec.head} head)")
    print(f"face at x0,y0,x1,y1 = {','.join(map(str, face.box))}")
    if face.age is not None:
        print(f"age: {face.age:.1f} years (80 % interval {face.age_low:.1f}-{face.age_high:.1f})")
    for name, group in face.groups.items():
        top = sorted(group.probabilities.items(), key=lambda kv: -kv[1])[:3]
        print(f"{name}: {group.label} ({group.probability:.0%}); next: "
              + ", ".join(f"{k} {v:.0%}" for k, v in top[1:]))
    return 0
