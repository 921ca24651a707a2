"""``deepage predict``: ages for every face in photos (files or folders), written as each photo is done.

Formats: ``table`` (readable), ``json`` (one JSON object per photo per line: :meth:`ImagePrediction.to_dict`),
``csv`` (one row per face). Each answer is flushed as soon as it is made, so an interrupted run keeps what
it wrote, and ``--output FILE --skip-existing`` resumes it. A progress bar (count, rate, ETA) goes to stderr
when stderr is a terminal (``--quiet``: never). A file that cannot be read is reported with its reason in
one line and the run goes on; the exit status is 1 if any file failed, else 0. ``--annotate DIR`` writes
one copy of each photo with boxes and ages drawn (and the attended regions with ``--explain``), under a
distinct name even when two inputs share one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from ..imageio import IMAGE_SUFFIXES, ImageDecodeError
from .predictor import ImagePrediction, Predictor, load_rgb
from .video import is_video, predict_videos
from .workers import resolve_workers

__all__ = ["run_predict", "iter_image_paths", "annotate", "unique_names", "done_sources", "CSV_COLUMNS",
           "FORMATS"]

FORMATS = ("table", "json", "csv")
CSV_COLUMNS = ["source", "face", "x0", "y0", "x1", "y1", "age", "age_low", "age_high", "utk14", "utk14_p",
               "utk8", "utk8_p", "adult_age", "p_adult", "decision", "detection_score", "error"]


def iter_image_paths(paths: list[str | Path]) -> Iterator[tuple[Path, Path]]:
    """``(file, name relative to its argument)`` for each file argument, and each image file (by suffix,
    sorted) under each folder argument, recursively. A path that does not exist is yielded as is (so that
    it is reported), and so is a folder named like an image (``x.jpg/``) that holds none."""
    for arg in map(Path, paths):
        if arg.is_dir():
            images = sorted(p for p in arg.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            for path in images:
                yield path, path.relative_to(arg)
            if not images and arg.suffix.lower() in IMAGE_SUFFIXES:
                yield arg, Path(arg.name)  # the predictor reports it: "not a regular file (a folder)"
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
        if face.decision is not None:
            text += f" {face.decision}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y0 - 4 if y0 - th - base - 4 >= 0 else min(h - base, y1 + th + 4)
        cv2.rectangle(out, (x0, ty - th - base), (x0 + tw, ty + base), (0, 200, 0), -1)
        cv2.putText(out, text, (x0, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def _write_annotated(target: Path, rgb: np.ndarray, result: ImagePrediction) -> Path:
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
        if face.decision is not None:
            parts.append(f"{face.decision} (P(age>={face.adult_age}) {face.p_adult:.2f})")
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
                     "" if face.adult_age is None else face.adult_age, _fmt(face.p_adult, 4), face.decision or "",
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


def unique_names(files: list[tuple[Path, Path]]) -> list[Path]:
    """One distinct relative name per input file, for the annotated copies: the name inside its folder
    argument (``photos/a/x.jpg`` → ``a/x.jpg``); with several arguments, the path below their common folder
    (``a/x.jpg`` and ``b/x.jpg`` stay apart); a name met twice anyway gets ``-2``, ``-3``, ... ."""
    names = [rel for _, rel in files]
    args_roots = {path.resolve().parents[len(rel.parts) - 1] for path, rel in files}
    if len(args_roots) > 1:
        common = Path(os.path.commonpath([str(r) for r in args_roots]))
        names = [path.resolve().relative_to(common) for path, _ in files]
    seen: set[str] = set()
    out = []
    for name in names:
        suffix = name.suffix.lower() if name.suffix.lower() in IMAGE_SUFFIXES else ".jpg"
        candidate, k = name.with_suffix(suffix), 1
        while str(candidate).lower() in seen:  # lower: one file on a case-insensitive disk
            k += 1
            candidate = name.with_name(f"{name.stem}-{k}{suffix}")
        seen.add(str(candidate).lower())
        out.append(candidate)
    return out


def done_sources(path: Path) -> set[str]:
    """The ``source`` of every image an earlier run answered in ``path`` (CSV with a header, or JSON lines).
    A line cut short by a kill is removed from the file, and so are the lines of images that failed (they
    are to be tried again), so appending continues cleanly."""
    return _earlier_run(path)[0]


def _earlier_run(path: Path) -> tuple[set[str], set[str]]:
    """``(answered, failed)`` sources of the output file of an earlier run; the file keeps only the complete
    lines of answered images (a "no face" answer counts as answered)."""
    text = path.read_bytes().decode("utf-8")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()  # cut short by a kill
    if not "".join(lines).strip():
        path.write_bytes(b"")
        return set(), set()
    head: list[str] = []
    rows = []  # (source, error or None, line)
    if "".join(lines).lstrip().startswith("{"):
        for line in filter(str.strip, lines):
            answer = json.loads(line)
            rows.append((answer["source"], answer.get("error"), line))
    else:
        head, body = lines[:1], lines[1:]
        if next(csv.reader(head), None) != CSV_COLUMNS:
            raise ValueError(f"{path} is neither this command's CSV (header {','.join(CSV_COLUMNS)}) nor JSON "
                             "lines")
        for line in body:
            if row := next(csv.reader([line]), None):
                rows.append((row[0], None if row[-1] == "no face" else row[-1], line))
    failed = {source for source, error, _ in rows if error}
    kept = [line for source, _, line in rows if source not in failed]
    if len(kept) + len(head) != len(lines) or not text.endswith("\n"):
        path.write_text("".join(head + kept), encoding="utf-8", newline="")
    return {source for source, _, _ in rows} - failed, failed


def _open_output(output: Path | None, fmt: str, skip_existing: bool) -> tuple[TextIO, set[str], bool]:
    """The stream results go to, the sources to skip, and whether the CSV header is still to be written."""
    if output is None:
        if skip_existing:
            raise ValueError("--skip-existing needs --output FILE (the file of an earlier run)")
        return sys.stdout, set(), True
    if skip_existing and fmt == "table":
        raise ValueError("--skip-existing needs --format csv or json (the table cannot be read back)")
    if output.exists() and output.stat().st_size > 0:
        if not skip_existing:
            raise FileExistsError(f"{output} exists: pass --skip-existing to resume that run, or remove it")
        done, failed = _earlier_run(output)
        if failed:
            print(f"deepage predict: trying again {len(failed)} images that failed in {output}", file=sys.stderr)
        return open(output, "a", encoding="utf-8", newline=""), done, output.stat().st_size == 0
    output.parent.mkdir(parents=True, exist_ok=True)
    return open(output, "w", encoding="utf-8", newline=""), set(), True


def write_answers(results: Iterable[ImagePrediction], out: TextIO, fmt: str, header: bool, total: int,
                  progress: bool | None, desc: str = "predict") -> int:
    """Write each answer as soon as it comes (flushed: an interrupted run keeps what it wrote), with a
    progress bar on stderr (``progress=None``: when stderr is a terminal) and one line there per failed
    image; the number that failed. The local and the Ray paths both write through here."""
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    to_terminal = out is sys.stdout and sys.stdout.isatty()

    def emit(text: str) -> None:
        if to_terminal:
            tqdm.write(text, file=out)  # clears the bar first, then redraws it below
        else:
            out.write(text + "\n")
        out.flush()  # every answer is on disk (or down the pipe) before the next image starts

    if fmt == "csv" and header:
        emit(",".join(CSV_COLUMNS))
    failed = 0
    with tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not show, dynamic_ncols=True) as bar:
        for result in results:
            if result.error:
                failed += 1
                if fmt != "table" or out is not sys.stdout:  # the table on stdout already says it
                    bar.write(f"deepage predict: {result.source}: {result.error}", file=sys.stderr)
            emit(_render(result, fmt))
            bar.update()
    return failed


def run_predict(paths: list[str | Path], model: str | Path | None = None, fmt: str = "table",
                annotate_dir: str | Path | None = None, detect: bool = True, explain: bool = False,
                backend: str = "auto", tta: bool = False, workers: int | str = "auto",
                output: str | Path | None = None,
                skip_existing: bool = False, progress: bool | None = None, ray: str | None = None,
                every: int = 1, camera: int | None = None, tracks: str | Path | None = None,
                max_missed: int | None = None, adult_age: int | str | None = "auto") -> int:
    """``deepage predict``: answer every image of ``paths`` (files, folders searched recursively) and write
    each answer as it is made, flushed (``fmt``: ``table``, ``json`` lines or ``csv``), to ``output`` or
    stdout. ``skip_existing``: resume into ``output``, skipping the images already in it. ``progress``: a bar
    with count, rate and ETA on stderr (``None``: when stderr is a terminal). ``ray``: answer on Ray actors
    instead (:mod:`deepage.inference.ray_batch`, the ``ray`` extra; ``"local"``: a Ray on this machine, else
    a cluster address such as ``"auto"``), the same rows. Returns the exit status: 0, 1 if any image failed
    or none was found, 2 for a bad request (raised as ``ValueError``). Video files (by suffix) and
    ``camera`` go to :func:`deepage.inference.video.predict_videos` (``every``, ``tracks``, ``max_missed``).
    ``workers``: face-finding processes; ``"auto"``: one per core, at most one per image (1 for a single
    image). ``adult_age``: the minor/adult check (see :class:`~deepage.inference.predictor.Predictor`)."""

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if ray is not None:
        if camera is not None or any(is_video(p) for p in paths):
            raise ValueError("--ray is for photos: run videos and --camera without it")
        from .ray_batch import run_predict_on_ray

        return run_predict_on_ray(paths, address=ray, model=model, fmt=fmt, annotate_dir=annotate_dir,
                                  detect=detect, explain=explain, backend=backend, tta=tta, output=output,
                                  skip_existing=skip_existing, progress=progress, adult_age=adult_age)
    if not paths and camera is None:
        raise ValueError("give photos, folders or videos to read, or --camera INDEX")
    if camera is not None or any(is_video(p) for p in paths):  # videos: deepage.inference.video
        if skip_existing or explain:
            raise ValueError("--skip-existing and --explain are for photos, not videos")
        extra = {} if max_missed is None else {"max_missed": max_missed}
        return predict_videos(paths, camera=camera, model=model, fmt=fmt, output=output, annotate=annotate_dir,
                              tracks=tracks, every=every, detect=detect, backend=backend, tta=tta,
                              workers=workers, **extra)
    files = list(iter_image_paths(paths))
    if not files:
        print("deepage predict: no image files found in " + ", ".join(map(str, paths)), file=sys.stderr)
        return 1
    out, done, header = _open_output(Path(output) if output else None, fmt, skip_existing)
    try:
        n_todo = sum(str(path) not in done for path, _ in files)
        kw = {"backend": backend, "detect": detect, "tta": tta, "workers": resolve_workers(workers, n_todo),
              "adult_age": adult_age}
        with (Predictor.from_checkpoint(model, **kw) if model else Predictor.default(**kw)) as predictor:
            if explain and not predictor.can_explain:
                print(f"deepage predict: --explain needs a model that reports attended regions (AL-ResNet, "
                      f"from its .pt checkpoint); {predictor.checkpoint_path} is {predictor.spec.name!r}",
                      file=sys.stderr)
                return 2
            names = unique_names(files)
            todo = [(path, name) for (path, _), name in zip(files, names, strict=True) if str(path) not in done]

            def annotated(results: Iterator[ImagePrediction]) -> Iterator[ImagePrediction]:
                for (path, name), result in zip(todo, results, strict=True):
                    if annotate_dir is not None and not result.error:
                        try:
                            _write_annotated(Path(annotate_dir) / name, load_rgb(path)[0], result)
                        except (ImageDecodeError, OSError) as exc:
                            result = replace(result, error=f"annotated copy: {getattr(exc, 'reason', exc)}")
                    yield result

            results = predictor.predict_iter([path for path, _ in todo], explain=explain)
            failed = write_answers(annotated(results), out, fmt, header=header, total=len(todo), progress=progress)
            if done:
                print(f"deepage predict: skipped {len(files) - len(todo)} images already in {output}",
                      file=sys.stderr)
            return 1 if failed else 0
    finally:
        if out is not sys.stdout:
            out.close()
