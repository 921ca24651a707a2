"""The prediction API: ``Predictor.from_checkpoint(path).predict(images)`` → small result dataclasses.

Per image (:mod:`deepage.crops`, in worker processes with ``workers > 1``): decode (EXIF orientation
applied, **RGB**), find every face and cut its UTKFace-style chip (:mod:`deepage.faces`), resized as ingest
resized the training images. Then, on batches of crops from several images: the checkpoint's own
preprocessing (:func:`deepage.preprocessing.prepare_eval_batch`, exactly as in evaluation), the model
(PyTorch or ONNX Runtime) and :func:`deepage.answers.answer_batch`, the answer path evaluation uses too.

With an ONNX graph (the bundled model's: :meth:`Predictor.default`) nothing here imports torch: the
spec, the preprocessing and the head's answers are NumPy (:mod:`deepage.readout`), which saves about 4 s
of every fresh ``deepage predict`` on a 2-core host. A ``.pt`` checkpoint loads PyTorch as before.

>>> predictor = Predictor.from_checkpoint("runs/mobilenet_v2_dex/best.pt")   # doctest: +SKIP
>>> result = predictor.predict_one("photo.jpg")                             # doctest: +SKIP
>>> result.faces[0].age, result.faces[0].groups["utk8"].label                # doctest: +SKIP
(31.4, '26-35')
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing as mp
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sized
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..answers import DEFAULT_ADULT_AGE, INTERVAL_QUANTILES, AgeGate, Answers, answer_batch, check_adult_age, p_at_least
from ..checkpoint import read_age_gates
from ..crops import Crop, CropMaker, PreparedImage, init_worker, load_rgb, worker_prepare_many
from ..faces import FaceAligner
from ..labels import get_scheme
from ..preprocessing import Preprocessing, input_to_stored, prepare_eval_batch
from ..readout import reader_for
from ..spec import ModelSpec
from .onnx_graph import INPUT_NAME, OUTPUT_NAME, cpu_threads, file_sha256, read_onnx_graph
from .workers import AUTO, resolve_workers, spawn_problem

if TYPE_CHECKING:
    import torch

__all__ = ["Predictor", "ImagePrediction", "FacePrediction", "GroupPrediction", "load_rgb", "DEFAULT_MODEL",
           "DEFAULT_GRAPH", "DEFAULT_INT8_MODEL", "INTERVAL_QUANTILES", "BACKENDS", "resolve_backend"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "assets" / "default_model.pt"
"""The bundled model that :meth:`Predictor.default` loads."""
DEFAULT_GRAPH = DEFAULT_MODEL.with_name("default_model.onnx")
"""The bundled model as a float ONNX graph with int8-stored weights (``deepage export default_model.pt
--weights int8``): the answers of ``default_model.pt`` without torch, which :meth:`Predictor.default` answers
with on the CPU when ONNX Runtime is installed."""
DEFAULT_INT8_MODEL = DEFAULT_MODEL.with_name("default_model.int8.onnx")
"""Where the bundled model's int8 ONNX graph goes (``deepage export default_model.pt --int8 DATA``): int8
arithmetic too, ``Predictor.default(int8=True)``. The default of 2026-12-06 ships without one: quantising it
moved its ages by 0.56 years on the calibration images, over the export's limit
(:data:`deepage.inference.export.INT8_MAX_AGE_CHANGE`); ``fast_model.int8.onnx`` is the int8 model bundled."""

BACKENDS = ("auto", "torch", "onnx")
BATCH_SIZE = 32
"""Face crops per model call: crops of several images go through the model together."""

TASK_IMAGES = 4
"""Images per task for the worker processes: each task costs the parent queueing, pickling and a future.
Alternating runs on 400 UTKFace chips with 2 workers: 135-164 img/s at one image per task, 167-173 at four
(the 300 stand-in photos: 63-66 against 65-68)."""


@dataclass(frozen=True)
class GroupPrediction:
    """One label scheme's answer: the most probable ``label`` (e.g. ``"26-35"``), its ``probability`` and
    every class's probability."""

    scheme: str
    label: str
    probability: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "label": self.label, "probability": round(self.probability, 4),
                "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()}}


@dataclass(frozen=True)
class FacePrediction:
    """One face. ``box``: ``(x0, y0, x1, y1)`` pixels of the (EXIF-rotated) input image; ``age`` in years and
    the interval ``[age_low, age_high]`` (10th-90th percentile of the age distribution), ``None`` for a
    classes head; ``groups``: scheme name (``utk14``, ``utk8``) → answer; ``detection_score``: the detector's
    confidence (``None`` without detection); ``regions``: attended regions (AL-ResNet, ``explain=True``),
    image pixels; ``age_probs``: ``(101,)`` float32, the age distribution over 0..100 years (``None`` for a
    classes head; kept for video tracks, not in :meth:`to_dict`). The minor/adult check (when the predictor
    has one, see :class:`Predictor`): ``p_adult`` = ``P(age >= adult_age)`` from that distribution and
    ``decision`` (``adult``, ``minor`` or ``unsure``) at the model's stored operating point; ``None``
    without."""

    box: tuple[int, int, int, int]
    age: float | None
    age_low: float | None
    age_high: float | None
    groups: dict[str, GroupPrediction]
    detection_score: float | None
    regions: list[tuple[int, int, int, int]] | None = None
    age_probs: np.ndarray | None = field(default=None, repr=False, compare=False)
    adult_age: int | None = None
    p_adult: float | None = None
    decision: str | None = None

    def to_dict(self) -> dict:
        def r(v: float | None, nd: int = 2) -> float | None:
            return None if v is None else round(float(v), nd)

        return {"box": list(self.box), "age": r(self.age), "age_low": r(self.age_low),
                "age_high": r(self.age_high),
                "groups": {k: g.to_dict() for k, g in self.groups.items()},
                "detection_score": r(self.detection_score, 4),
                "regions": None if self.regions is None else [list(b) for b in self.regions],
                "adult_age": self.adult_age, "p_adult": r(self.p_adult, 4), "decision": self.decision}


@dataclass(frozen=True)
class ImagePrediction:
    """All faces of one image (largest first). ``source``: the path (or ``<array>``, ``<bytes>``, ...);
    ``width``, ``height``: of the decoded image (0 when it could not be read); ``error``: why it could not."""

    source: str
    width: int
    height: int
    faces: list[FacePrediction]
    error: str | None = None

    def to_dict(self) -> dict:
        return {"source": self.source, "width": self.width, "height": self.height,
                "faces": [f.to_dict() for f in self.faces], "error": self.error}


def _as_iterable(images) -> Iterable:
    if isinstance(images, (str, Path, bytes, bytearray, memoryview, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]  # (N, H, W, C): a batch of images
    return images


# ---- reading the model's answer -----------------------------------------------------------------------
def _class_names(spec: ModelSpec, scheme: str) -> tuple[str, ...]:
    """The class names of ``scheme`` (a name the answers carry): a classes head's own scheme, which may be
    custom, or a built-in one."""
    if spec.head == "classes" and spec.scheme is not None:
        own = get_scheme(spec.scheme)
        if own.name == scheme:
            return own.names
    return get_scheme(scheme).names


def _input_box_to_crop(box, pre: Preprocessing, crop_shape: tuple[int, int]) -> np.ndarray:
    """Corners ``(4, 2)`` in crop pixels of a box ``(x0, y0, x1, y1)`` given in model-input pixels."""
    x0, y0, x1, y1 = (float(v) for v in box)
    stored = input_to_stored(np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)]), pre)
    # stored square → crop (square_resize: central square, then resize)
    h, w = crop_shape
    side = min(h, w)
    return stored * side / pre.stored_size + np.array([(w - side) // 2, (h - side) // 2])


def model_threads(workers: int) -> int | None:
    """ONNX Runtime's intra-op threads for a predictor with ``workers`` face-finding processes: the cores
    the workers leave (at least one), or ``None`` (PyTorch's thread count) with no worker processes. The
    workers keep their cores busy; model threads on the same cores only take turns with them (2 workers on
    2 cores, two alternating runs each: 4.1-4.5 ms of main-process CPU per photo with one thread, 5.3-6.2 ms
    with two; 67.8-71.9 photos per second against 65.3-68.6)."""
    return max(1, cpu_threads() - workers) if workers > 1 else None


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``n`` for the block, then restored (``None``: left as they are).

    While worker processes keep every core busy, the batch work of this process (preprocessing, the heads,
    a torch model) runs on the cores they leave (:func:`model_threads`): with its default threads it spent
    6.7 ms of CPU per UTKFace chip instead of 2.9 (2 workers on 2 cores, the bundled int8 graph), its idle
    threads spinning for work. The setting is per process: other PyTorch work running in other threads of
    the caller's process during the block gets it too. Where torch is not loaded (an ONNX graph answering)
    there is no PyTorch work to bound, and torch is not imported for it."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_backend(path: Path, backend: str, device: str = "cpu") -> str:
    """``"torch"`` or ``"onnx"`` for a model file. ``"auto"``: ONNX Runtime for an ``.onnx`` file, and for a
    ``.pt`` checkpoint on the CPU when onnxruntime is installed (the bundled model runs ~5x faster on it
    than in PyTorch on this project's 2-core machine: BatchNorm folded into the convolutions), else torch."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if path.suffix.lower() == ".onnx":
        return "onnx"
    have_ort = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
    return "onnx" if have_ort and str(device) == "cpu" else "torch"


def _ordered_map(executor, fn, items: Iterable, ahead: int, chunk: int = 1) -> Iterator:
    """``executor.map(fn, items)`` with at most ``ahead`` tasks in flight, so that a long run holds a
    bounded number of decoded crops (``Executor.map`` submits every item at once). Each task takes
    ``chunk`` items: ``fn`` gets a list of items and returns a list of results."""
    pending: deque[Future] = deque()
    remaining = iter(items)
    while batch := list(islice(remaining, chunk)):
        pending.append(executor.submit(fn, batch))
        if len(pending) >= ahead:
            yield from pending.popleft().result()
    while pending:
        yield from pending.popleft().result()


class Predictor:
    """A model ready to answer: ``predict`` / ``predict_iter`` / ``predict_one`` take photos and return
    :class:`ImagePrediction`.

    Build with :meth:`from_checkpoint` (a ``.pt`` checkpoint or an ``.onnx`` file from ``deepage export``) or
    :meth:`default`. ``detect``: find faces (default) or treat each whole image as one face crop.
    ``workers``: processes that decode images and find faces (1: in this process); the model runs here, on
    batches of :data:`BATCH_SIZE` crops from several images. ``"auto"``: one per core, at most one per image,
    and this process alone for a single image or where spawned processes could not start (a script's top
    level outside ``if __name__ == "__main__":``, a program read from stdin: :func:`~deepage.inference.
    workers.spawn_problem`; a warning says so). Safe to share between threads (model calls are serialised).
    A predictor with worker processes holds a pool: :meth:`close` it (or use ``with``).

    ``aligner``: the face finder (default ``FaceAligner(output_size=200)``: BlazeFace, then the HOG looks;
    ``FaceAligner(output_size=200, detector="dlib")`` for the HOG looks alone).

    ``adult_age``: the minor/adult check (each face's ``p_adult`` and ``decision``) at the operating point
    stored with the model for that age (``deepage calibrate``; ``ValueError`` when there is none);
    ``"auto"`` (default): for 18 when the model has one, else off; ``None``: off. ``age_gates``: the stored
    operating points, adult age → :class:`~deepage.answers.AgeGate` (``from_checkpoint`` reads them).
    """

    def __init__(self, spec: ModelSpec, checkpoint_path: Path, backend: str,
                 model: torch.nn.Module | None = None, session=None, detect: bool = True, device: str = "cpu",
                 aligner: FaceAligner | None = None, tta: bool = False, workers: int | str = 1,
                 adult_age: int | str | None = AUTO, age_gates: dict[int, AgeGate] | None = None,
                 weights_digest: str | None = None, source_sha256: str | None = None) -> None:
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx' here (resolve 'auto' first), got {backend!r}")
        if (session if backend == "onnx" else model) is None:
            raise ValueError(f"the {backend} backend needs {'an ONNX session' if backend == 'onnx' else 'a model'}")
        self.spec = spec
        self.checkpoint_path = Path(checkpoint_path)
        self.backend = backend
        # an .onnx file's record of the weights it was exported from, and of the .pt file's SHA-256 (None for
        # a .pt: they are its own)
        self.weights_digest, self.source_sha256 = weights_digest, source_sha256
        self.detect = detect
        self.tta = tta  # average each face with its mirror image (2x the model cost)
        self.device = str(device)
        self.workers = resolve_workers(workers)
        self._auto_workers = workers == AUTO
        self._pool_size = 0
        self.age_gates = dict(age_gates or {})
        self.age_gate = self._choose_gate(adult_age)
        self._model = model  # kept with the onnx backend too (from a .pt): attended regions need it
        self._session = session
        # The head's reader turns outputs into ages and groups (NumPy); the head has no weights it uses, so
        # for ONNX the reader built from the spec answers exactly as the trained head does.
        self._read = model.read if model is not None else reader_for(spec.head, spec.scheme, **spec.head_kwargs)
        self.aligner = aligner or FaceAligner(output_size=200)
        self._lock = threading.Lock()  # model calls
        self._pool_lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    @property
    def age_estimate(self) -> str:
        """How the head turns an age distribution into one age (``"median"`` or ``"mean"``; ``"mean"`` for
        heads without the choice): video tracks fuse distributions and answer the same way."""
        # the spec's, which the head (and an ensemble's head) is built from and calibrate writes
        return self.spec.head_kwargs.get("estimate", "median") if self.spec.head == "dex" else "mean"

    # ---- construction --------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, backend: str = "auto", detect: bool = True,
                        device: str = "cpu", tta: bool = False, workers: int | str = 1,
                        adult_age: int | str | None = AUTO, aligner: FaceAligner | None = None) -> Predictor:
        """Load a ``.pt`` checkpoint or an ``.onnx`` file written by ``deepage export`` (its spec and stored
        minor/adult operating points are read from the file). ``backend``: ``"auto"`` (see
        :func:`resolve_backend`), ``"torch"`` or ``"onnx"`` (a ``.pt`` is then exported, ~2 s, and the checked graph
        cached on disk for the next process: :func:`~deepage.inference.export.checked_onnx_bytes`).
        ``workers``, ``adult_age``, ``aligner``: see :class:`Predictor`."""
        path = Path(path)
        wanted = backend
        backend = resolve_backend(path, backend, device)
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} not found")
        kw = {"detect": detect, "device": device, "tta": tta, "workers": workers, "adult_age": adult_age,
              "aligner": aligner}
        n_workers = resolve_workers(workers)
        if path.suffix.lower() == ".onnx":
            if backend != "onnx":
                raise ValueError(f"{path} is an ONNX file: use backend='onnx' or 'auto' (--backend onnx), or "
                                 "give the .pt checkpoint for the torch backend")
            graph = read_onnx_graph(path, model_threads(n_workers))  # no torch: see the module's notes
            return cls(graph.spec, path, "onnx", session=graph.session, age_gates=read_age_gates(graph.record, path),
                       weights_digest=graph.record["weights_digest"],
                       source_sha256=graph.record["checkpoint_sha256"], **kw)
        from ..checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, name=path).to(device)
        kw["age_gates"] = read_age_gates(ckpt, path)
        if backend == "onnx":
            from .export import checked_onnx_bytes, onnx_session

            try:
                data = checked_onnx_bytes(model, path)  # the same check as `deepage export`; cached on disk
                session = onnx_session(data, model_threads(n_workers))
            except Exception as exc:  # noqa: BLE001 - exporters fail in many ways; auto falls back to torch
                if wanted == "onnx":
                    raise
                log.warning("%s: ONNX export failed (%s: %s); using the torch backend", path,
                            type(exc).__name__, exc)
            else:
                return cls(model.spec, path, "onnx", model=model, session=session, **kw)
        return cls(model.spec, path, "torch", model=model, **kw)

    @classmethod
    def default(cls, int8: bool | str = AUTO, **kw) -> Predictor:
        """The bundled model (``deepage/assets/default_model.pt``); keyword arguments go to
        :meth:`from_checkpoint`.

        Where ONNX Runtime is installed, the device is the CPU and ``backend`` is not ``"torch"``, it answers
        through a bundled graph exported from these very weights (no torch: a faster start). ``int8``:
        ``"auto"`` (default) or ``False``: the float graph (:data:`DEFAULT_GRAPH`: the ``.pt``'s answers), else
        the ``.pt`` itself (``"auto"`` takes the int8 graph where the float one is absent); ``True``: the int8
        graph (:data:`DEFAULT_INT8_MODEL`: int8 arithmetic, its own test figures in ``docs/MODEL_CARD.md``)
        or an error. A graph that was exported from other weights is passed over with a warning."""
        if not DEFAULT_MODEL.is_file():
            raise FileNotFoundError(f"the bundled model {DEFAULT_MODEL} is missing (this copy of DeepAge "
                                    "ships without one): pass a checkpoint instead, e.g. "
                                    "--model runs/NAME/best.pt")
        if int8 not in (True, False, AUTO):
            raise ValueError(f"int8 must be True, False or 'auto', got {int8!r}")
        backend, device = kw.get("backend", "auto"), str(kw.get("device", "cpu"))
        have_ort = importlib.util.find_spec("onnxruntime") is not None  # a graph needs no `onnx` package
        if int8 is True:
            if not DEFAULT_INT8_MODEL.is_file():
                raise ValueError(f"Predictor.default(int8=True): this copy has no int8 graph of the bundled model "
                                 f"({DEFAULT_INT8_MODEL.name}); export one with `deepage export "
                                 f"{DEFAULT_MODEL.name} -o {DEFAULT_INT8_MODEL.name} --int8 DATA.h5`, or use the "
                                 f"bundled int8 model {DEFAULT_MODEL.with_name('fast_model.int8.onnx')}")
            graph = DEFAULT_INT8_MODEL
        elif backend == "torch" or device != "cpu" or not have_ort:
            graph = None
        elif DEFAULT_GRAPH.is_file():
            graph = DEFAULT_GRAPH
        elif int8 == AUTO and DEFAULT_INT8_MODEL.is_file():
            graph = DEFAULT_INT8_MODEL
        else:  # a copy without a graph: the .pt, quietly
            graph = None
        if graph is not None:
            predictor = cls.from_checkpoint(graph, **{**kw, "backend": "onnx"})
            problem = _graph_problem(graph, predictor.weights_digest, predictor.source_sha256)
            if problem is None:
                return predictor
            predictor.close()
            if int8 is True:
                raise ValueError(f"Predictor.default(int8=True): {problem}")
            log.warning("answering with %s: %s", DEFAULT_MODEL.name, problem)
        return cls.from_checkpoint(DEFAULT_MODEL, **kw)

    def _choose_gate(self, adult_age: int | str | None) -> AgeGate | None:
        """The stored operating point the minor/adult check uses (see :class:`Predictor`), or ``None``."""
        if adult_age is None or (adult_age == AUTO and DEFAULT_ADULT_AGE not in self.age_gates):
            return None
        age = DEFAULT_ADULT_AGE if adult_age == AUTO else check_adult_age(adult_age)
        if self.spec.head == "classes":
            raise ValueError(f"{self.checkpoint_path.name} has a classes head: the minor/adult check needs a "
                             "head with an age distribution (dex or coral)")
        if age not in self.age_gates:
            have = ", ".join(map(str, sorted(self.age_gates))) or "none"
            onnx = " (then export it again)" if self.checkpoint_path.suffix.lower() == ".onnx" else ""
            raise ValueError(f"{self.checkpoint_path} has no operating point for adult age {age} (stored: {have}), "
                             f"so no stated error rate: choose one on the validation split first: deepage calibrate "
                             f"CHECKPOINT.pt --data DATA.h5 --split val --adult-age {age}{onnx}")
        return self.age_gates[age]

    def close(self) -> None:
        """Stop the worker processes (if any); the predictor stays usable (a new pool starts on demand)."""
        pool, self._pool, self._pool_size = self._pool, None, 0
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def _regions_fn(self):
        """The model's ``attended_regions`` (on the model or its backbone, as AL-ResNet has it) or None."""
        if self._model is None:
            return None
        return getattr(self._model, "attended_regions", None) or getattr(self._model.backbone,
                                                                         "attended_regions", None)

    @property
    def can_explain(self) -> bool:
        """Whether the model reports attended regions (AL-ResNet loaded from its ``.pt`` checkpoint)."""
        return self._regions_fn is not None

    def describe(self) -> dict:
        """Plain facts about the loaded model (for logs and the HTTP service; no paths beyond the file
        name)."""
        return {"model_file": self.checkpoint_path.name, "backend": self.backend, "model": self.spec.name,
                "head": self.spec.head, "input_size": self.spec.preprocessing.input_size,
                "detector": self.aligner.method if self.detect else None, "explain": self.can_explain,
                "tta": self.tta, "adult_age": self.age_gate.adult_age if self.age_gate else None}

    # ---- inference -----------------------------------------------------------------------------------
    def _logits(self, x: np.ndarray) -> np.ndarray | torch.Tensor:
        """``(B, 3, S, S)`` float32 normalised → ``(B, K)`` head outputs (a tensor from the torch backend)."""
        if self._session is not None:
            return self._session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        import torch

        with torch.inference_mode():
            return self._model(torch.from_numpy(x).to(self.device)).float().cpu()

    def _regions(self, x: np.ndarray) -> list[list]:
        """The model's attended regions: per image a list of ``(x0, y0, x1, y1)`` in model-input pixels.

        ``attended_regions(x)`` (AL-ResNet's: ``(B, 3, H, W)`` → ``(B, T, 4)`` pixels of ``x``) may return a
        ``(B, R, 4)`` tensor/array or a list of per-image lists."""
        import torch

        with torch.inference_mode():
            regions = self._regions_fn(torch.from_numpy(x).to(self.device))
        if isinstance(regions, torch.Tensor):
            regions = regions.detach().float().cpu().numpy()
        return [[tuple(float(v) for v in box) for box in np.asarray(per_image).reshape(-1, 4)]
                for per_image in regions]

    def _face(self, crop: Crop, answers: Answers, i: int, regions: list | None) -> FacePrediction:
        age = None if answers.age is None else float(answers.age[i])
        low = high = None
        if answers.age_interval is not None:
            low, high = (float(v) for v in answers.age_interval[i])
        groups = {}
        for scheme, p in answers.class_probs.items():
            p = p[i].astype(np.float64)
            names = _class_names(self.spec, scheme)
            k = int(p.argmax())
            groups[scheme] = GroupPrediction(scheme, names[k], float(p[k]),
                                             {n: float(v) for n, v in zip(names, p, strict=True)})
        image_regions = None
        if regions is not None:
            image_regions = []
            for box in regions:
                pts = _input_box_to_crop(box, self.spec.preprocessing, crop.crop_shape)
                pts = pts @ crop.to_image[:, :2].T + crop.to_image[:, 2]
                image_regions.append(tuple(int(round(v)) for v in (*pts.min(0), *pts.max(0))))
        probs = None if answers.age_probs is None else answers.age_probs[i]
        gate, p_adult, decision = self.age_gate, None, None
        if gate is not None and probs is not None:
            p_adult = float(p_at_least(probs, gate.adult_age))
            decision = str(gate.decide(np.array([p_adult]))[0])
        return FacePrediction(box=crop.box, age=age, age_low=low, age_high=high, groups=groups,
                              detection_score=crop.score, regions=image_regions, age_probs=probs,
                              adult_age=None if gate is None else gate.adult_age, p_adult=p_adult, decision=decision)

    def _answer_images(self, prepared: list[PreparedImage], explain: bool) -> list[ImagePrediction]:
        """Run the model on every crop of ``prepared`` (in batches of :data:`BATCH_SIZE`)."""
        crops = [(k, c) for k, item in enumerate(prepared) for c in item.crops]
        faces: list[list[FacePrediction]] = [[] for _ in prepared]
        with self._lock, torch_threads(model_threads(self._pool_size) if self._pool_size > 1 else None):
            for start in range(0, len(crops), BATCH_SIZE):
                chunk = crops[start:start + BATCH_SIZE]
                x = prepare_eval_batch(np.stack([c.stored for _, c in chunk]), self.spec.preprocessing)
                answers = answer_batch(self._logits, self._read, x, tta_flip=self.tta)
                regions = self._regions(x) if explain else [None] * len(chunk)
                for j, (k, c) in enumerate(chunk):
                    faces[k].append(self._face(c, answers, j, regions[j]))
        return [ImagePrediction(item.source, item.width, item.height, f, error=item.error)
                for item, f in zip(prepared, faces, strict=True)]

    def _prepared(self, items: Iterable, detect: bool) -> Iterator[PreparedImage]:
        """Each input decoded, checked and cut into face crops, in order; in worker processes when
        ``workers > 1`` (spawned: they import no torch, and a fork of a process running ONNX Runtime's or
        PyTorch's thread pools is not safe)."""
        maker = CropMaker(self.aligner, self.spec.preprocessing.stored_size)
        workers = self._workers_for(items)
        if workers == 1:
            yield from (maker(item, detect) for item in items)
            return
        if _importing_main_in_a_worker():  # the parent explains, in one line (below): no traceback per worker
            raise SystemExit(1)
        with self._pool_lock:
            if self._pool is None:  # each worker gets its CropMaker once; tasks carry only the image
                self._pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                                 initializer=init_worker, initargs=(maker,))
                self._pool_size = workers
            pool = self._pool
        try:
            yield from _ordered_map(pool, partial(worker_prepare_many, detect=detect), items,
                                    ahead=4 * workers, chunk=TASK_IMAGES)
        except BrokenProcessPool:
            self.close()
            problem = spawn_problem()
            raise RuntimeError(
                f"Predictor(workers={self.workers}): the worker processes died"
                + (f" ({problem})" if problem else "") + ". In a script, build the predictor "
                "under `if __name__ == \"__main__\":` (workers are spawned and import the main module), or use "
                "workers=1") from None

    def _workers_for(self, items: Iterable) -> int:
        """Processes that prepare ``items`` (1: this process). With ``workers="auto"`` at most one per image
        (a sized input), and 1 where spawned processes could not start (:func:`spawn_problem`, warned once)."""
        if self.workers == 1 or self._pool is not None:
            return self._pool_size or self.workers
        if not self._auto_workers:
            return self.workers
        n = min(self.workers, len(items)) if isinstance(items, Sized) else self.workers
        problem = spawn_problem() if n > 1 else None
        if problem:
            if not getattr(self, "_warned_in_process", False):
                log.warning("Predictor(workers='auto'): answering in this process, not %d worker processes: %s. "
                            "Put that code under `if __name__ == \"__main__\":` for the workers", n, problem)
                self._warned_in_process = True
            return 1
        return max(1, n)

    def predict_iter(self, images, detect: bool | None = None, explain: bool = False) -> Iterator[ImagePrediction]:
        """:meth:`predict`, yielding each image's answer in input order as soon as its batch of crops has
        been through the model (a long run can be followed, and an interrupted one keeps what it gave)."""
        detect = self.detect if detect is None else detect
        if explain and not self.can_explain:
            raise ValueError(f"model {self.spec.name!r} ({self.backend} backend) reports no attended "
                             "regions: explain needs an AL-ResNet model loaded from its .pt checkpoint")
        pending: list[PreparedImage] = []
        n_crops = 0
        for item in self._prepared(_as_iterable(images), detect):
            pending.append(item)
            n_crops += len(item.crops)
            if n_crops >= BATCH_SIZE:
                yield from self._answer_images(pending, explain)
                pending, n_crops = [], 0
        if pending:
            yield from self._answer_images(pending, explain)

    def predict(self, images, detect: bool | None = None, explain: bool = False) -> list[ImagePrediction]:
        """Ages for every face in ``images``: one or a list of paths, ``bytes``, PIL images or arrays
        (``(H, W)``, ``(H, W, 3)`` **RGB**, ``(H, W, 4)`` RGBA; a ``(N, H, W, 3)`` array is N images).

        ``detect``: override the predictor's setting (``False``: each whole image is one face crop).
        ``explain``: also return the attended regions (models with ``attended_regions`` only; else
        ``ValueError``). An image that cannot be read, or is too small (:data:`deepage.crops.MIN_IMAGE_SIDE`),
        gives an :class:`ImagePrediction` with ``error`` set; it does not stop the others.
        """
        return list(self.predict_iter(images, detect=detect, explain=explain))

    def predict_one(self, image, detect: bool | None = None, explain: bool = False) -> ImagePrediction:
        """:meth:`predict` for a single image (always in this process)."""
        if isinstance(image, np.ndarray) and image.ndim == 4:
            raise ValueError(f"predict_one takes one image, got an array of shape {image.shape}")
        detect = self.detect if detect is None else detect
        if explain and not self.can_explain:
            raise ValueError(f"model {self.spec.name!r} ({self.backend} backend) reports no attended "
                             "regions: explain needs an AL-ResNet model loaded from its .pt checkpoint")
        prepared = CropMaker(self.aligner, self.spec.preprocessing.stored_size)(image, detect)
        return self._answer_images([prepared], explain)[0]


def _importing_main_in_a_worker() -> bool:
    """Whether this is a spawned process still importing the parent's main module: a script without a
    ``__main__`` guard, building a ``Predictor(workers > 1)`` again in each of its workers. ``_inheriting`` is
    the flag multiprocessing itself reads for its own "bootstrapping phase" error (no public one exists)."""
    # Not also `sys.modules["__main__"].__name__ == "__mp_main__"`: while multiprocessing re-runs the script
    # (runpy.run_path, run_name "__mp_main__"), sys.modules["__main__"] is still the spawn bootstrap module.
    return bool(getattr(mp.current_process(), "_inheriting", False))


def _graph_problem(graph: Path, graph_digest: str | None, graph_source_sha256: str | None = None) -> str | None:
    """Why the bundled ``graph`` (:data:`DEFAULT_GRAPH` or :data:`DEFAULT_INT8_MODEL`), which records
    ``graph_digest`` as the weights it was exported from (and ``graph_source_sha256`` as the ``.pt`` file's
    SHA-256), cannot stand in for the bundled model (``None``: it can). Both come from the graph's ONNX
    Runtime session, already open (reading them with the ``onnx`` package took 1.3 s of every start, to
    import it). The same file hash is the same weights, a check that needs no torch; otherwise (the ``.pt``
    calibrated again since, or a graph written before the hash was stored) the weights themselves are
    compared, which loads the checkpoint with torch."""
    if graph_source_sha256 is not None and graph_source_sha256 == file_sha256(DEFAULT_MODEL):
        return None
    from ..checkpoint import load_checkpoint, weights_digest

    digest = weights_digest(load_checkpoint(DEFAULT_MODEL)["state_dict"])
    if graph_digest != digest:
        how = "--int8 DATA.h5" if graph.name.endswith(".int8.onnx") else "--weights int8"
        return (f"{graph.name} was exported from other weights ({graph_digest}) than "
                f"{DEFAULT_MODEL.name} ({digest}); export it again with `deepage export {DEFAULT_MODEL.name} "
                f"-o {graph.name} {how}`")
    return None
