"""``deepage predict``: ages for every face in photos (files or folders), printed as each photo is done.

Formats: ``table`` (readable), ``json`` (one JSON object per photo per line: :meth:`ImagePrediction.to_dict`),
``csv`` (one row per face). A file that cannot be read is reported with its reason and the run goes on; the
exit status is 1 if any file failed, else 0. ``--annotate DIR`` writes a copy of each photo with boxes and
ages drawn (and the attended regions with ``--explain``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from ..imageio import ImageDecodeError
from .predictor import ImagePrediction, Predictor, load_rgb

__all__ = ["run_predict", "iter_image_paths", "annotate", "IMAGE_SUFFIXES", "CSV_COLUMNS"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
CSV_COLUMNS = ["source", "face", "x0", "y0", "x1", "y1", "age", "age_low", "age_high", "utk14", "utk14_p",
               "utk8", "utk8_p", "detection_score", "error"]


def iter_image_paths(paths: list[str | Path]) -> Iterator[tuple[Path, Path]]:
    """``(file, name relative to its argument)`` for each file argument, and each image file (by suffix,
    sorted) under each folder argument, recursively. A path that does not exist is yielded as is (so that
    it is reported)."""
    for arg in map(Path, paths):
        if arg.is_dir():
            images = (p for p in arg.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            for path in sorted(images):
                yield path, path.relative_to(arg)
        else:
            yield arg, Path(arg.name)


def annotate(rgb: np.ndarray, result: ImagePrediction) -> np.ndarray:
    """A copy of ``rgb`` ``(H, W, 3)`` uint8 RGB with each face's box and age drawn (regions in yellow)."""
    out = rgb.copy()
    h, w = out.shape[:2]
    scale = max(0.4, min(h, w) / 700)
    thick = max(1, round(scale * 2))
    for face in result.faces:
        for x0, y0, x1, y1 in face.regions or []:
            cv2.rectangle(out, (x0, y0), (x1, y1), (255, 215, 0), max(1, thick // 2))
        x0, y0, x1, y1 = face.box
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (0, 200, 0), thick)
        if face.age is not None:
            text = f"{face.age:.0f} ({face.age_low:.0f}-{face.age_high:.0f})"
        else:
            group = next(iter(face.groups.values()))
            text = f"{group.label} ({group.probability:.0%})"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y0 - 4 if y0 - th - base - 4 >= 0 else min(h - base, y1 + th + 4)
        cv2.rectangle(out, (x0, ty - th - base), (x0 + tw, ty + base), (0, 200, 0), -1)
        cv2.putText(out, text, (x0, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def _write_annotated(out_dir: Path, rel: Path, rgb: np.ndarray, result: ImagePrediction) -> Path:
    suffix = rel.suffix.lower() if rel.suffix.lower() in IMAGE_SUFFIXES else ".jpg"
    target = out_dir / rel.with_suffix(suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(target), cv2.cvtColor(annotate(rgb, result), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {target}")
    return target


def _fmt(v: float | None, nd: int = 1) -> str:
    return "" if v is None else f"{v:.{nd}f}"


def _table_lines(result: ImagePrediction) -> list[str]:
    if result.error:
        return [f"{result.source}: ERROR {result.error}"]
    if not result.faces:
        return [f"{result.source}: no face found ({result.width}x{result.height})"]
    lines = []
    for k, face in enumerate(result.faces):
        parts = [f"{result.source} face {k}", "box " + ",".join(map(str, face.box))]
        if face.age is not None:
            parts.append(f"age {face.age:.1f} [{face.age_low:.1f}-{face.age_high:.1f}]")
        parts += [f"{name} {g.label} ({g.probability:.0%})" for name, g in face.groups.items()]
        if face.regions:
            parts.append(f"{len(face.regions)} regions")
        lines.append("  ".join(parts))
    return lines


def _csv_rows(result: ImagePrediction) -> list[list]:
    if result.error or not result.faces:
        return [[result.source] + [""] * (len(CSV_COLUMNS) - 2) + [result.error or "no face"]]
    rows = []
    for k, face in enumerate(result.faces):
        g14, g8 = face.groups.get("utk14"), face.groups.get("utk8")
        rows.append([result.source, k, *face.box, _fmt(face.age, 2), _fmt(face.age_low, 2),
                     _fmt(face.age_high, 2),
                     g14.label if g14 else "", _fmt(g14.probability if g14 else None, 4),
                     g8.label if g8 else "", _fmt(g8.probability if g8 else None, 4),
                     _fmt(face.detection_score, 3), ""])
    return rows


def _render(result: ImagePrediction, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(result.to_dict())
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(_csv_rows(result))
        return buf.getvalue().rstrip("\n")
    return "\n".join(_table_lines(result))


def run_predict(args: argparse.Namespace) -> int:
    """Run ``deepage predict`` (flags: see :func:`deepage.cli.build_parser`). Returns the exit status."""
    from tqdm import tqdm

    if args.model:
        predictor = Predictor.from_checkpoint(args.model, backend=args.backend, detect=not args.no_detect,
                                              tta=args.tta)
    else:
        predictor = Predictor.default(backend=args.backend, detect=not args.no_detect, tta=args.tta)
    if args.explain and not predictor.can_explain:
        print(f"deepage predict: --explain needs a model that reports attended regions (AL-ResNet, torch "
              f"backend); {predictor.checkpoint_path} is {predictor.spec.name!r} with the "
              f"{predictor.backend} backend", file=sys.stderr)
        return 2
    out_dir = Path(args.annotate) if args.annotate else None
    files = list(iter_image_paths(args.paths))
    failed = 0

    def emit(text: str) -> None:
        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()

    if args.format == "csv":
        emit(",".join(CSV_COLUMNS))
    with tqdm(files, desc="predict", unit="img", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        for path, rel in bar:
            try:
                rgb, name = load_rgb(path)
                result = replace(predictor.predict_one(rgb, explain=args.explain), source=name)
                if out_dir is not None:
                    _write_annotated(out_dir, rel, rgb, result)
            except (ImageDecodeError, OSError) as exc:
                result = ImagePrediction(str(path), 0, 0, [], error=getattr(exc, "reason", None) or str(exc))
            except Exception as exc:  # noqa: BLE001 - one odd file (a decoder's own error) must not stop the run
                reason = f"unexpected error: {type(exc).__name__}: {exc}"
                result = ImagePrediction(str(path), 0, 0, [], error=reason)
            if result.error:
                failed += 1
                if args.format != "table":  # the table already says it on stdout
                    print(f"deepage predict: {result.source}: {result.error}", file=sys.stderr)
            emit(_render(result, args.format))
    if not files:
        print("deepage predict: no image files found in " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 1
    return 1 if failed else 0
