"""The prediction API: ``Predictor.from_checkpoint(path).predict(images)`` → small result dataclasses.

Per image: decode (EXIF orientation applied, **RGB**), find every face and cut its UTKFace-style chip
(:mod:`deepage.inference.faces`), turn the chips into a batch with the checkpoint's own preprocessing
(:func:`deepage.preprocessing.images_to_batch`, exactly as in training), run the model (PyTorch or ONNX
Runtime) and read the answer with the model head's ``predict``.

>>> predictor = Predictor.from_checkpoint("runs/mobilenet_v2_dex/best.pt")   # doctest: +SKIP
>>> result = predictor.predict_one("photo.jpg")                             # doctest: +SKIP
>>> result.faces[0].age, result.faces[0].groups["utk8"].label                # doctest: +SKIP
(31.4, '26-35')
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..imageio import ImageDecodeError, decode_image, to_rgb_uint8
from ..labels import get_scheme
from ..models.heads import INTERVAL_QUANTILES, HeadOutput, age_quantiles, average_outputs, create_head
from ..models.registry import ModelSpec
from ..preprocessing import Preprocessing, images_to_batch
from .faces import FaceAligner

__all__ = ["Predictor", "ImagePrediction", "FacePrediction", "GroupPrediction", "load_rgb", "DEFAULT_MODEL",
           "INTERVAL_QUANTILES", "BACKENDS"]

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "assets" / "default_model.pt"
"""The bundled model that :meth:`Predictor.default` loads."""

BACKENDS = ("torch", "onnx")
BATCH_SIZE = 32


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
    image pixels."""

    box: tuple[int, int, int, int]
    age: float | None
    age_low: float | None
    age_high: float | None
    groups: dict[str, GroupPrediction]
    detection_score: float | None
    regions: list[tuple[int, int, int, int]] | None = None

    def to_dict(self) -> dict:
        def r(v: float | None, nd: int = 2) -> float | None:
            return None if v is None else round(float(v), nd)

        return {"box": list(self.box), "age": r(self.age), "age_low": r(self.age_low),
                "age_high": r(self.age_high),
                "groups": {k: g.to_dict() for k, g in self.groups.items()},
                "detection_score": r(self.detection_score, 4),
                "regions": None if self.regions is None else [list(b) for b in self.regions]}


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


# ---- image loading ------------------------------------------------------------------------------------
def load_rgb(image, name: str | None = None) -> tuple[np.ndarray, str]:
    """Any accepted input → ``((H, W, 3) uint8 RGB, source name)``.

    Accepts a path (``str``/``Path``), encoded ``bytes``, a PIL image (EXIF orientation applied) or an array
    ``(H, W)``, ``(H, W, 3)`` **RGB** or ``(H, W, 4)`` RGBA (uint8, uint16 or float in [0, 1]).
    Raises :class:`ImageDecodeError` (naming the file) for unreadable, oversized or non-image data.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        name = name or str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageDecodeError(name, "file not found") from None
        except OSError as exc:
            raise ImageDecodeError(name, f"cannot read ({exc.strerror or exc})") from exc
        return decode_image(data, name), name
    if isinstance(image, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        return decode_image(bytes(image), name), name
    if isinstance(image, Image.Image):
        return to_rgb_uint8(image), name or "<PIL image>"
    if isinstance(image, np.ndarray):
        name = name or "<array>"
        try:
            return to_rgb_uint8(image), name
        except ValueError as exc:
            raise ImageDecodeError(name, str(exc)) from exc
    raise ImageDecodeError(name or "<input>", f"unsupported input type {type(image).__name__} (give a path, "
                                              "bytes, a PIL image or an (H, W[, 3|4]) RGB array)")


def _as_list(images) -> list:
    if isinstance(images, (str, Path, bytes, bytearray, memoryview, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]  # (N, H, W, C): a batch of images
    return list(images)


# ---- reading the model's answer -----------------------------------------------------------------------
def _class_names(head: torch.nn.Module, scheme: str) -> tuple[str, ...]:
    own = getattr(head, "scheme", None)
    if own is not None and own.name == scheme:
        return own.names
    return get_scheme(scheme).names


def _input_box_to_crop(box, pre: Preprocessing, crop_shape: tuple[int, int]) -> np.ndarray:
    """Corners ``(4, 2)`` in crop pixels of a box ``(x0, y0, x1, y1)`` given in model-input pixels."""
    x0, y0, x1, y1 = (float(v) for v in box)
    corners = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    n = pre.input_size
    # model input → stored square (eval transform: the central crop_pct, see preprocessing._affine)
    stored = (pre.crop_pct * (2 * corners / n - 1) + 1) * pre.stored_size / 2
    # stored square → crop (square_resize: central square, then resize)
    h, w = crop_shape
    side = min(h, w)
    return stored * side / pre.stored_size + np.array([(w - side) // 2, (h - side) // 2])


@dataclass
class _Crop:
    image_index: int
    crop: np.ndarray  # (h, w, 3) uint8 RGB: what the model sees (after resizing)
    to_image: np.ndarray  # (2, 3) affine: crop pixels → image pixels
    box: tuple[int, int, int, int]
    score: float | None
    regions: list = field(default_factory=list)


class Predictor:
    """A model ready to answer: ``predict`` / ``predict_one`` take photos and return :class:`ImagePrediction`.

    Build with :meth:`from_checkpoint` (a ``.pt`` checkpoint or an ``.onnx`` file from ``deepage export``) or
    :meth:`default`. ``detect``: find faces (default) or treat each whole image as one face crop.
    Safe to share between threads (calls are serialised).
    """

    def __init__(self, spec: ModelSpec, checkpoint_path: Path, backend: str,
                 model: torch.nn.Module | None = None, session=None, detect: bool = True, device: str = "cpu",
                 metadata: dict | None = None, aligner: FaceAligner | None = None, tta: bool = False) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.spec = spec
        self.checkpoint_path = Path(checkpoint_path)
        self.backend = backend
        self.detect = detect
        self.tta = tta  # average each face with its mirror image (2x the model cost)
        self.device = torch.device(device)
        self.metadata = metadata or {}
        self._model = model
        self._session = session
        # The head turns logits into ages and groups; it has no weights that predict uses, so for ONNX a
        # freshly built one answers exactly as the trained one does.
        self._head = model.head if model is not None else create_head(spec.head, 1, scheme=spec.scheme,
                                                                       **spec.head_kwargs)
        self._head.eval()
        self.aligner = aligner or FaceAligner(output_size=200)
        self._lock = threading.Lock()

    # ---- construction --------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, backend: str = "torch", detect: bool = True,
                        device: str = "cpu", tta: bool = False) -> Predictor:
        """Load a ``.pt`` checkpoint (either backend: for ``onnx`` it is exported in memory) or an ``.onnx``
        file written by ``deepage export`` (``onnx`` backend only; its spec is read from the file)."""
        path = Path(path)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} not found")
        if path.suffix.lower() == ".onnx":
            if backend != "onnx":
                raise ValueError(f"{path} is an ONNX file: use backend='onnx' (--backend onnx), or give "
                                 "the .pt checkpoint for the torch backend")
            from .export import FORMAT_KEY, SPEC_KEY, onnx_session

            try:
                session = onnx_session(path)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
                raise ValueError(f"{path} is not a readable ONNX model ({exc})") from exc
            meta = session.get_modelmeta().custom_metadata_map
            if SPEC_KEY not in meta:
                raise ValueError(f"{path} has no {SPEC_KEY!r} metadata: export it with `deepage export`")
            spec = ModelSpec.from_dict(json.loads(meta[SPEC_KEY]))
            info = {"format": meta.get(FORMAT_KEY), "metrics": json.loads(meta.get("deepage_metrics", "{}"))}
            return cls(spec, path, "onnx", session=session, detect=detect, device=device, metadata=info, tta=tta)
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt).to(device)
        info = {k: ckpt.get(k) for k in ("metrics", "versions", "split_fingerprint") if k in ckpt}
        if backend == "onnx":
            from .export import model_to_onnx_bytes, onnx_session

            session = onnx_session(model_to_onnx_bytes(model.cpu()))
            return cls(model.spec, path, "onnx", session=session, detect=detect, device=device, metadata=info,
                       tta=tta)
        return cls(model.spec, path, "torch", model=model, detect=detect, device=device, metadata=info, tta=tta)

    @classmethod
    def default(cls, **kw) -> Predictor:
        """The bundled model (``deepage/assets/default_model.pt``); keyword arguments go to
        :meth:`from_checkpoint`."""
        if not DEFAULT_MODEL.is_file():
            raise FileNotFoundError(f"the bundled model {DEFAULT_MODEL} is missing (this copy of DeepAge "
                                    "ships without one): pass a checkpoint instead, e.g. "
                                    "--model runs/NAME/best.pt")
        return cls.from_checkpoint(DEFAULT_MODEL, **kw)

    @property
    def _regions_fn(self):
        """The model's ``attended_regions`` (on the model or its backbone, as AL-ResNet has it) or None."""
        if self._model is None:
            return None
        return getattr(self._model, "attended_regions", None) or getattr(self._model.backbone,
                                                                         "attended_regions", None)

    @property
    def can_explain(self) -> bool:
        """Whether the model reports attended regions (AL-ResNet, torch backend)."""
        return self._regions_fn is not None

    def describe(self) -> dict:
        """Plain facts about the loaded model (for logs and the HTTP service)."""
        return {"checkpoint": str(self.checkpoint_path), "backend": self.backend, "model": self.spec.name,
                "head": self.spec.head, "input_size": self.spec.preprocessing.input_size,
                "detector": self.aligner.method if self.detect else None, "explain": self.can_explain}

    # ---- inference -----------------------------------------------------------------------------------
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` normalised → ``(B, K)`` head outputs, on the CPU."""
        if self._session is not None:
            from .export import INPUT_NAME, OUTPUT_NAME

            out = self._session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            return torch.from_numpy(out)
        with torch.inference_mode():
            return self._model(x.to(self.device)).float().cpu()

    def _regions(self, x: torch.Tensor) -> list[list]:
        """The model's attended regions: per image a list of ``(x0, y0, x1, y1)`` in model-input pixels.

        ``attended_regions(x)`` (AL-ResNet's: ``(B, 3, H, W)`` → ``(B, T, 4)`` pixels of ``x``) may return a
        ``(B, R, 4)`` tensor/array or a list of per-image lists."""
        with torch.inference_mode():
            regions = self._regions_fn(x.to(self.device))
        if isinstance(regions, torch.Tensor):
            regions = regions.detach().float().cpu().numpy()
        return [[tuple(float(v) for v in box) for box in np.asarray(per_image).reshape(-1, 4)]
                for per_image in regions]

    def _face_crops(self, index: int, rgb: np.ndarray, detect: bool) -> list[_Crop]:
        h, w = rgb.shape[:2]
        if not detect:
            return [_Crop(index, rgb, np.array([[1.0, 0, 0], [0, 1.0, 0]]), (0, 0, w, h), None)]
        return [_Crop(index, f.chip, f.chip_to_image, f.box, f.score) for f in self.aligner.detect(rgb)]

    def _answer(self, crop: _Crop, out: HeadOutput, i: int) -> FacePrediction:
        age = low = high = None
        if out.age is not None:
            age = float(out.age[i])
        if out.age_probs is not None:
            probs = out.age_probs[i].numpy().astype(np.float64)
            low, high = (float(age_quantiles(probs, q)) for q in INTERVAL_QUANTILES)
        groups = {}
        for scheme, p in out.class_probs.items():
            p = p[i].numpy().astype(np.float64)
            names = _class_names(self._head, scheme)
            k = int(p.argmax())
            groups[scheme] = GroupPrediction(scheme, names[k], float(p[k]),
                                             {n: float(v) for n, v in zip(names, p, strict=True)})
        regions = None
        if crop.regions:
            regions = []
            for box in crop.regions:
                pts = _input_box_to_crop(box, self.spec.preprocessing, crop.crop.shape[:2])
                pts = pts @ crop.to_image[:, :2].T + crop.to_image[:, 2]
                regions.append(tuple(int(round(v)) for v in (*pts.min(0), *pts.max(0))))
        return FacePrediction(box=crop.box, age=age, age_low=low, age_high=high, groups=groups,
                              detection_score=crop.score, regions=regions)

    def predict(self, images, detect: bool | None = None, explain: bool = False) -> list[ImagePrediction]:
        """Ages for every face in ``images``: one or a list of paths, ``bytes``, PIL images or arrays
        (``(H, W)``, ``(H, W, 3)`` **RGB**, ``(H, W, 4)`` RGBA; a ``(N, H, W, 3)`` array is N images).

        ``detect``: override the predictor's setting (``False``: each whole image is one face crop).
        ``explain``: also return the attended regions (models with ``attended_regions`` only; else
        ``ValueError``). An image that cannot be read gives an :class:`ImagePrediction` with ``error`` set;
        it does not stop the others.
        """
        detect = self.detect if detect is None else detect
        if explain and not self.can_explain:
            raise ValueError(f"model {self.spec.name!r} ({self.backend} backend) reports no attended "
                             "regions: explain needs an AL-ResNet model and the torch backend")
        items = _as_list(images)
        results: list[ImagePrediction | None] = [None] * len(items)
        decoded: list[tuple[int, str, np.ndarray]] = []
        for i, item in enumerate(items):
            try:
                rgb, name = load_rgb(item)
            except ImageDecodeError as exc:
                results[i] = ImagePrediction(exc.name, 0, 0, [], error=exc.reason)
                continue
            except Exception as exc:  # noqa: BLE001 - one odd file (a decoder's own error) must not stop the rest
                source = str(item) if isinstance(item, (str, Path)) else f"<{type(item).__name__}>"
                reason = f"unexpected error: {type(exc).__name__}: {exc}"
                results[i] = ImagePrediction(source, 0, 0, [], error=reason)
                continue
            decoded.append((i, name, rgb))
        with self._lock:
            crops = [c for i, _, rgb in decoded for c in self._face_crops(i, rgb, detect)]
            faces: dict[int, list[FacePrediction]] = {i: [] for i, _, _ in decoded}
            for start in range(0, len(crops), BATCH_SIZE):
                chunk = crops[start:start + BATCH_SIZE]
                x = images_to_batch([c.crop for c in chunk], self.spec.preprocessing)
                out = self._head.predict(self._logits(x))
                if self.tta:
                    out = average_outputs(out, self._head.predict(self._logits(torch.flip(x, dims=[3]))))
                if explain:
                    for c, regions in zip(chunk, self._regions(x), strict=True):
                        c.regions = regions
                for j, c in enumerate(chunk):
                    faces[c.image_index].append(self._answer(c, out, j))
        for i, name, rgb in decoded:
            results[i] = ImagePrediction(name, int(rgb.shape[1]), int(rgb.shape[0]), faces[i])
        return results  # type: ignore[return-value]

    def predict_one(self, image, detect: bool | None = None, explain: bool = False) -> ImagePrediction:
        """:meth:`predict` for a single image."""
        if isinstance(image, np.ndarray) and image.ndim == 4:
            raise ValueError(f"predict_one takes one image, got an array of shape {image.shape}")
        return self.predict([image], detect=detect, explain=explain)[0]

