"""Batch prediction on Ray Data (the ``ray`` extra): ``deepage predict FOLDER --ray [ADDRESS]`` and
:func:`predict_on_ray`, for more photos than one machine answers in time.

The driver lists the images as ``deepage predict`` lists them (files; image files under folders, sorted),
or through ``pyarrow.fs`` for URIs (``s3://bucket/photos/``, ``gs://...``), and makes a dataset of their
paths (``ray.data.from_items``: paths only, never pixels). ``map_batches`` sends batches of paths to a pool
of actors (a callable class, ``ActorPoolStrategy``); each actor loads the model once and runs
:class:`~deepage.inference.predictor.Predictor` on its batches, **reading the files itself**, so the images
go from storage to the node that answers them. Each answer comes back with its input index, the driver puts
the answers back in input order, and the rows are written by :mod:`~deepage.inference.predict_cli`'s own
renderers: a Ray run's CSV and JSON lines are the local run's, source path in every row.

On a cluster: the files must be readable under the same path on every node (a shared mount, or URIs the
nodes can reach), and every node needs ``deepage[ray]`` of the driver's version. A model given by path is
read once on the driver and reaches the actors through Ray's object store; the bundled model is each node's
own copy.

>>> for result in predict_on_ray(["photos/"], address="auto"):     # doctest: +SKIP
...     print(result.source, [face.age for face in result.faces])
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pickle
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray
import ray.data

from ..imageio import IMAGE_SUFFIXES
from .predict_cli import FORMATS, _open_output, iter_image_paths, write_answers
from .predictor import ImagePrediction, Predictor

__all__ = ["predict_on_ray", "run_predict_on_ray", "list_inputs", "RayPredictor", "BATCH_SIZE", "MAX_BLOCKS"]

BATCH_SIZE = 16
"""Images per actor call (one ``map_batches`` batch); the actor's predictor batches their face crops."""

MAX_BLOCKS = 10_000
"""At most this many dataset blocks of paths (one per batch below that): a million paths in 10,000 blocks."""


def _is_uri(source: str | Path) -> bool:
    return isinstance(source, str) and "://" in source


def _list_uri(uri: str) -> list[str]:
    """A file URI as is; the image files (by suffix, sorted) under a folder URI, recursively."""
    from pyarrow import fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(uri)
    if filesystem.get_file_info(root).type != pafs.FileType.Directory:
        return [uri]  # a file, or missing: the actor that reads it reports it
    scheme = uri.split("://", 1)[0]
    found = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    names = sorted(f.path for f in found
                   if f.type == pafs.FileType.File and Path(f.path).suffix.lower() in IMAGE_SUFFIXES)
    return [f"{scheme}://{name}" for name in names]


def list_inputs(paths: Iterable[str | Path]) -> list[str]:
    """The image sources of ``paths``, in ``deepage predict``'s order (:func:`iter_image_paths`: each file
    argument, the image files under each folder argument, sorted); a URI is listed the same way through
    ``pyarrow.fs``. A path that does not exist is kept, so that it is reported."""
    sources: list[str] = []
    for arg in paths:
        sources += _list_uri(arg) if _is_uri(arg) else [str(p) for p, _ in iter_image_paths([arg])]
    return sources


@functools.lru_cache(maxsize=64)
def _folder_filesystem(folder_uri: str):
    """``(filesystem, path)`` of a folder URI, once per folder: building an S3 filesystem can cost a
    request (its region), which each image of the folder would otherwise pay."""
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(folder_uri)


def _read_uri(uri: str) -> bytes:
    folder, name = uri.rsplit("/", 1)
    filesystem, path = _folder_filesystem(folder)
    with filesystem.open_input_file(f"{path.rstrip('/')}/{name}") as f:
        return f.read()


class RayPredictor:
    """The callable class that ``map_batches`` runs in each actor: the model is loaded once, in
    ``__init__``. A batch ``{"index": (B,) int, "source": (B,) str}`` → ``{"index": (B,), "result": (B,)
    pickled ImagePrediction}``, its ``source`` the input path or URI."""

    def __init__(self, model: bytes | None, model_suffix: str = ".pt", threads: int = 1, explain: bool = False,
                 **predictor_kw) -> None:
        # The model's threads (ONNX Runtime's and PyTorch's): the actor's own CPUs. OMP_NUM_THREADS is what
        # both read where torch is not loaded yet (an ONNX graph answers without importing it).
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        if isinstance(model, ray.ObjectRef):
            model = ray.get(model)
        self.explain = explain
        if model is None:
            self.predictor = Predictor.default(**predictor_kw)
            return
        self._dir = tempfile.TemporaryDirectory(prefix="deepage-ray-")  # removed with the actor
        path = Path(self._dir.name) / f"model{model_suffix}"
        path.write_bytes(model)
        self.predictor = Predictor.from_checkpoint(path, **predictor_kw)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sources = [str(s) for s in batch["source"]]
        results: list[ImagePrediction | None] = [None] * len(sources)
        todo = []  # (position, path or bytes): local paths are read by the predictor, URIs here
        for k, source in enumerate(sources):
            if not _is_uri(source):
                todo.append((k, source))
                continue
            try:
                todo.append((k, _read_uri(source)))
            except FileNotFoundError:
                results[k] = ImagePrediction(source, 0, 0, [], error="file not found")
            except OSError as exc:
                results[k] = ImagePrediction(source, 0, 0, [], error=f"cannot read ({exc})")
        answers = self.predictor.predict([item for _, item in todo], explain=self.explain)
        for (k, _), answer in zip(todo, answers, strict=True):
            results[k] = replace(answer, source=sources[k])  # bytes read from a URI answer as "<bytes>"
        return {"index": np.asarray(batch["index"], dtype=np.int64),
                "result": np.array([pickle.dumps(r) for r in results], dtype=object)}


def _check_address(address: str | None) -> str | None:
    """``None`` for a Ray on this machine (``None`` or ``"local"``), else the cluster's address as given."""
    if address in (None, "local"):
        return None
    if address == "auto" or ":" in address:
        return address
    raise ValueError(f"Ray address must be 'auto', HOST:PORT or ray://HOST:PORT, got {address!r} (with "
                     "`deepage predict`, put --ray after the paths, or write --ray=ADDRESS)")


@contextmanager
def _ray_session(address: str | None):
    """Ray as asked: a session already started as it is; ``None`` or ``"local"``: a Ray on this machine
    (stopped afterwards); ``"auto"``, ``HOST:PORT`` or ``ray://HOST:PORT``: that cluster (disconnected
    afterwards)."""
    address = _check_address(address)
    if ray.is_initialized():
        yield
        return
    if address is None:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def _ray_failure(exc: BaseException) -> RuntimeError:
    """A failure inside Ray (an actor that died, a batch that raised) as one line: the innermost cause's
    type and first line. The per-image failures never get here (they are rows with ``error``), nor a bad
    model file (:func:`_check_model`)."""
    inner, seen = exc, set()
    while id(inner) not in seen and (nxt := getattr(inner, "cause", None) or inner.__cause__) is not None:
        seen.add(id(inner))
        inner = nxt
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return RuntimeError(f"the Ray run failed: {type(inner).__name__}: {lines[0] if lines else ''} (the "
                        "traceback is in the Ray session's logs)")


def _check_model(model: str | Path | None, backend: str, explain: bool, adult_age) -> None:
    """Load the model here once, before Ray starts, so that a missing or bad model file, an ``adult_age``
    the model has no operating point for, or ``explain`` on a model without attended regions, is refused
    as the local path refuses it, not by every actor."""
    kw = {"backend": backend, "detect": False, "adult_age": adult_age}
    with (Predictor.from_checkpoint(model, **kw) if model else Predictor.default(**kw)) as predictor:
        if explain and not predictor.can_explain:
            raise ValueError(f"--explain needs a model that reports attended regions (AL-ResNet, from its .pt "
                             f"checkpoint); {predictor.checkpoint_path} is {predictor.spec.name!r}")


class _NotNews(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


@contextmanager
def _quiet_ray_data():
    """Ray Data as quiet on stderr as ``deepage predict``, for the run: its progress bars off (the command
    draws its own), its INFO lines (each execution's start, plan and end) only in the session's log files,
    its warning that the bars are off dropped; its other warnings (say, actors that cannot be placed) stay.
    Ray Data's settings are put back afterwards."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    data_logger = logging.getLogger("ray.data")
    bars, level, not_news = ctx.enable_progress_bars, data_logger.level, _NotNews()
    ctx.enable_progress_bars = False
    data_logger.setLevel(max(data_logger.getEffectiveLevel(), logging.WARNING))
    handlers = list(data_logger.handlers)
    for handler in handlers:
        handler.addFilter(not_news)
    try:
        yield
    finally:
        ctx.enable_progress_bars = bars
        data_logger.setLevel(level)
        for handler in handlers:
            handler.removeFilter(not_news)


def _predict_sources(sources: list[str], model: str | Path | None, *, batch_size: int,
                     num_actors: int | None, cpus_per_actor: float, **actor_kw) -> Iterator[ImagePrediction]:
    """Answers for ``sources`` (already listed) in their order, on the Ray session in use."""
    model_ref, suffix = None, ".pt"
    if model is not None:
        path = Path(model)
        model_ref, suffix = ray.put(path.read_bytes()), path.suffix.lower()
    n_batches = math.ceil(len(sources) / batch_size)
    if num_actors is None:  # one actor per CPU of the cluster as it is now
        num_actors = int(ray.cluster_resources().get("CPU", 1) // cpus_per_actor)
    num_actors = max(1, min(num_actors, n_batches))
    items = [{"index": i, "source": s} for i, s in enumerate(sources)]
    dataset = ray.data.from_items(items, override_num_blocks=min(n_batches, MAX_BLOCKS))
    answered = dataset.map_batches(
        RayPredictor, batch_size=batch_size, batch_format="numpy", num_cpus=cpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        fn_constructor_kwargs={"model": model_ref, "model_suffix": suffix, "workers": 1,
                               "threads": max(1, int(cpus_per_actor)), **actor_kw})
    # Blocks come back in the order they finish: hold the early ones until those before them arrive.
    waiting: dict[int, ImagePrediction] = {}
    next_index = 0
    with _quiet_ray_data():
        for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
            for index, blob in zip(batch["index"], batch["result"], strict=True):
                waiting[int(index)] = pickle.loads(blob)
            while next_index in waiting:
                yield waiting.pop(next_index)
                next_index += 1
    if next_index != len(sources):
        raise RuntimeError(f"the Ray run returned {next_index} of {len(sources)} answers in order")


def predict_on_ray(paths: Iterable[str | Path], model: str | Path | None = None, address: str | None = None, *,
                   batch_size: int = BATCH_SIZE, num_actors: int | None = None, cpus_per_actor: float = 1,
                   backend: str = "auto", detect: bool = True, tta: bool = False, explain: bool = False,
                   adult_age: int | str | None = "auto") -> Iterator[ImagePrediction]:
    """:class:`ImagePrediction` for every image of ``paths`` (files, folders searched recursively, or
    ``s3://``-style URIs readable from every node), in input order, answered by a pool of Ray actors.

    ``model``: a ``.pt`` checkpoint or ``.onnx`` file, read here and shipped to the actors (``None``: the
    bundled model). ``address``: ``None`` (or ``"local"``) starts a Ray on this machine; ``"auto"``, a
    ``HOST:PORT`` or ``ray://HOST:PORT`` joins that cluster; a Ray session already started is used as it
    is. ``batch_size``: images per actor call; ``num_actors``: the pool's size (``None``: the cluster's
    CPUs / ``cpus_per_actor``); ``backend``, ``detect``, ``tta``, ``explain``, ``adult_age``: as for
    :class:`Predictor`.
    A file that cannot be read gives a result with ``error`` set, as locally. A generator: Ray starts on
    the first ``next`` and stops when it is exhausted or closed.
    """
    _check_address(address)
    yield from _answers(list_inputs(paths), model, address, batch_size=batch_size, num_actors=num_actors,
                        cpus_per_actor=cpus_per_actor, backend=backend, detect=detect, tta=tta, explain=explain,
                        adult_age=adult_age)


def _answers(sources: list[str], model: str | Path | None, address: str | None,
             **kw) -> Iterator[ImagePrediction]:
    """:func:`_predict_sources` in the Ray session asked for, Ray's failures as one-line errors."""
    if not sources:
        return
    _check_model(model, kw["backend"], kw["explain"], kw["adult_age"])
    with _ray_session(address):
        try:
            yield from _predict_sources(sources, model, **kw)
        except ray.exceptions.RayError as exc:
            raise _ray_failure(exc) from exc


def run_predict_on_ray(paths: list[str | Path], address: str | None = None, model: str | Path | None = None,
                       fmt: str = "table", annotate_dir: str | Path | None = None, detect: bool = True,
                       explain: bool = False, backend: str = "auto", tta: bool = False,
                       output: str | Path | None = None, skip_existing: bool = False,
                       progress: bool | None = None, adult_age: int | str | None = "auto",
                       batch_size: int = BATCH_SIZE, num_actors: int | None = None) -> int:
    """``deepage predict --ray``: :func:`~deepage.inference.predict_cli.run_predict` with the answers made
    by :func:`predict_on_ray`: the same rows in the same order, each written (flushed) as soon as all
    before it are; ``--skip-existing`` resumes as locally. Returns the exit status (1 if any image failed
    or none was found)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if annotate_dir is not None:
        raise ValueError("--annotate is not available with --ray (the copies would be written on the "
                         "cluster's nodes): run without --ray for annotated copies")
    _check_address(address)
    sources = list_inputs(paths)
    if not sources:
        print("deepage predict: no image files found in " + ", ".join(map(str, paths)), file=sys.stderr)
        return 1
    out, done, header = _open_output(Path(output) if output else None, fmt, skip_existing)
    try:
        todo = [s for s in sources if s not in done]
        answers = _answers(todo, model, address, batch_size=batch_size, num_actors=num_actors, cpus_per_actor=1,
                           backend=backend, detect=detect, tta=tta, explain=explain, adult_age=adult_age)
        failed = write_answers(answers, out, fmt, header=header, total=len(todo), progress=progress,
                               desc="predict (ray)")
        if done:
            print(f"deepage predict: skipped {len(sources) - len(todo)} images already in {output}",
                  file=sys.stderr)
        return 1 if failed else 0
    finally:
        if out is not sys.stdout:
            out.close()
