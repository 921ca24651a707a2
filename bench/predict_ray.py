"""Batch prediction on a local Ray against the plain local path, on the same files in one run: the overhead
of ``deepage predict --ray`` on one machine.

* local: ``Predictor.default(workers=W).predict(paths)`` (W face-finding processes, the model in this one),
  timed after loading and a short warm-up;
* Ray: ``predict_on_ray(paths, batch_size=B)`` on a Ray started here with ``--cpus`` CPUs (one actor per
  CPU; or the cluster at ``--address``), timed from the call to the last answer — the driver's model check,
  the actors starting and each loading the model are in that time, as in every real run — and also from
  the first answer to the last ("steady").

The files: ``--n`` real-photo stand-ins made from the bundled public-domain photo (NASA's astronaut),
scaled to 40-120 %, rotated by up to 10 degrees and placed on 400-700 px backgrounds (a smooth random colour
gradient with noise), saved as JPEG in a temporary folder (or ``--folder``: your own images). Runs
alternate local, Ray, local, Ray ... ``--repeats`` times; the table shows each, the summary the best of
each side and the overhead ratio (local img/s ÷ Ray img/s; 1.0: no overhead). Both answers are checked to
be the same rows. Run it on a quiet machine:

    python bench/predict_ray.py                         # 400 photos, all cores, 2 repeats
    nice -n 19 python bench/predict_ray.py --n 40 --repeats 1   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ASTRONAUT = Path(__file__).resolve().parents[1] / "deepage" / "assets" / "astronaut.jpg"


def write_photos(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` JPEG stand-ins for real photos: the bundled photo scaled, rotated and placed on a gradient."""
    import cv2

    bgr = cv2.imread(str(ASTRONAUT))
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        h, w = (int(v) for v in rng.integers(400, 701, size=2))
        c0, c1 = rng.integers(0, 256, size=(2, 3))
        t = np.linspace(0, 1, w)[None, :, None]
        canvas = (c0 * (1 - t) + c1 * t) * np.ones((h, 1, 1))
        canvas = np.clip(canvas + rng.normal(0, 8, canvas.shape), 0, 255).astype(np.uint8)
        side = min(int(512 * rng.uniform(0.4, 1.2)), h, w)
        photo = cv2.resize(bgr, (side, side), interpolation=cv2.INTER_AREA)
        turn = cv2.getRotationMatrix2D((side / 2, side / 2), float(rng.uniform(-10, 10)), 1.0)
        photo = cv2.warpAffine(photo, turn, (side, side), borderMode=cv2.BORDER_REFLECT)
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        canvas[y:y + side, x:x + side] = photo
        path = folder / f"{k:05d}.jpg"
        cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def time_local(predictor, paths: list[Path]) -> tuple[float, list]:
    t = time.perf_counter()
    results = predictor.predict(paths)
    return len(paths) / (time.perf_counter() - t), results


def time_ray(paths: list[Path], batch_size: int) -> tuple[float, float, list]:
    """(img/s from the call, img/s from the first answer, results)."""
    from deepage.inference.ray_batch import predict_on_ray

    t = time.perf_counter()
    results, first = [], None
    for result in predict_on_ray(paths, batch_size=batch_size):
        first = first or time.perf_counter()
        results.append(result)
    end = time.perf_counter()
    steady = (len(paths) - 1) / (end - first) if len(paths) > 1 and end > first else float("nan")
    return len(paths) / (end - t), steady, results


def main(argv: list[str] | None = None) -> int:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="photo stand-ins to make (default 400)")
    parser.add_argument("--folder", default=None, help="your own images instead (searched recursively)")
    parser.add_argument("--workers", type=int, default=cores, help=f"local face-finding processes ({cores})")
    parser.add_argument("--cpus", type=int, default=cores, help=f"the local Ray's CPUs = its actors ({cores})")
    parser.add_argument("--address", default=None, help="a Ray cluster instead of a local Ray ('auto', ...)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per actor call (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="local/Ray pairs to run (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import ray
    except ImportError:
        print("needs the 'ray' extra: pip install 'deepage[ray]'", file=sys.stderr)
        return 1
    from deepage.inference.predict_cli import _render
    from deepage.inference.predictor import Predictor
    from deepage.inference.ray_batch import list_inputs

    print("command: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            paths = [Path(p) for p in list_inputs([args.folder])]
        else:
            paths = write_photos(Path(tmp), args.n, args.seed)
        if args.address:
            ray.init(address=args.address)
        else:
            ray.init(num_cpus=args.cpus, include_dashboard=False)
        try:
            with Predictor.default(workers=args.workers) as local:
                local.predict(paths[:4] * max(1, args.workers))  # starts the worker processes
                cpus = int(ray.cluster_resources().get("CPU", 0))
                print(f"{len(paths)} images; local: {local.describe()['model']} on {local.backend}, workers "
                      f"{args.workers}; Ray {ray.__version__}: {cpus} CPUs, batch {args.batch_size}")
                print(f"{'run':<6}{'local img/s':>13}{'ray img/s':>12}{'ray steady':>12}{'same rows':>11}")
                best_local = best_ray = best_steady = 0.0
                for k in range(args.repeats):
                    local_rate, ours = time_local(local, paths)
                    ray_rate, steady, theirs = time_ray(paths, args.batch_size)
                    same = [_render(r, "csv") for r in ours] == [_render(r, "csv") for r in theirs]
                    best_local, best_ray = max(best_local, local_rate), max(best_ray, ray_rate)
                    best_steady = max(best_steady, steady)
                    print(f"{k + 1:<6}{local_rate:>13.1f}{ray_rate:>12.1f}{steady:>12.1f}{str(same):>11}")
        finally:
            ray.shutdown()
    print(f"overhead ratio local / Ray: {best_local / best_ray:.2f} end to end (actors starting and loading "
          f"the model included), {best_local / best_steady:.2f} steady (best of {args.repeats} each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
