"""The model registry: one name → one builder, and the common :class:`AgeModel` interface.

Every model is ``backbone (B, 3, H, W) → features (B, F)`` followed by a swappable head (see
:mod:`deepage.models.heads`), and carries its :class:`ModelSpec` (everything needed to rebuild it,
preprocessing included) as ``model.spec``.

>>> from deepage.models import create_model
>>> model = create_model("cnn", head="classes", num_classes=14, input_size=64)
>>> model.spec.preprocessing.input_size
64
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..preprocessing import Preprocessing
from ..readout import ReadOut
from ..spec import ModelSpec
from .heads import HeadOutput, create_head

__all__ = ["ModelSpec", "AgeModel", "Backbone", "register_model", "create_model", "list_models", "model_info",
           "build_from_spec", "load_backbone_weights", "scheme_for"]


@dataclass(frozen=True)
class Backbone:
    """What a family's builder returns: the feature extractor and its feature width ``F``."""

    module: nn.Module
    num_features: int


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., Backbone]
    default_input_size: int
    normalization: str
    description: str
    min_input_size: int
    offline_weights: Callable[[], Path | None] | None  # where pretrained=True finds its weights without network


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, default_input_size: int, normalization: str = "imagenet",
                   description: str = "", min_input_size: int = 32,
                   offline_weights: Callable[[], Path | None] | None = None) -> Callable:
    """Decorator: register ``builder(input_size, pretrained, **kwargs) -> Backbone`` under ``name``.

    ``offline_weights``: returns the local file ``pretrained=True`` loads (``None`` when its package is not
    installed); ``deepage models`` reports it as ``pretrained_offline``."""

    def wrap(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(builder, default_input_size, normalization, description or (builder.__doc__ or "")
                                 .strip().split("\n")[0], min_input_size, offline_weights)
        return builder

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    from . import _families  # noqa: F401  (imports every family so that they register)

    return sorted(_REGISTRY)


def model_info(name: str) -> dict:
    """Default input size, normalisation and one-line description of a registered model."""
    list_models()
    entry = _entry(name)
    offline = entry.offline_weights() if entry.offline_weights is not None else None
    return {"name": name, "default_input_size": entry.default_input_size, "normalization": entry.normalization,
            "description": entry.description, "pretrained_offline": offline is not None}


def _entry(name: str) -> _Entry:
    list_models()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def scheme_for(num_classes: int | None, scheme: str | None) -> str | None:
    """The label scheme meant by ``num_classes`` (14 → utk14, 8 → utk8) or an explicit ``scheme``."""
    if scheme is not None:
        return scheme
    if num_classes is None:
        return None
    by_count = {14: "utk14", 8: "utk8"}
    if num_classes not in by_count:
        raise ValueError(f"num_classes={num_classes}: use 14 or 8, or pass scheme='0,13,20,...' for custom bins")
    return by_count[num_classes]


class AgeModel(nn.Module):
    """``backbone`` then ``head``. ``forward``: ``(B, 3, H, W)`` normalised input → ``(B, K)`` head outputs
    (logits); ``predict`` turns outputs into ages and class probabilities (:class:`HeadOutput`), ``read``
    the same from NumPy outputs (:class:`~deepage.readout.ReadOut`)."""

    def __init__(self, spec: ModelSpec, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone.module
        self.num_features = backbone.num_features
        self.head = head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → ``(B, F)``."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def loss(self, outputs: torch.Tensor, ages: torch.Tensor, **targets) -> torch.Tensor:
        """The head's loss; ``targets``: extra targets the head takes (the DEX head's ``teacher_probs``)."""
        return self.head.loss(outputs, ages, **targets)

    def predict(self, outputs: torch.Tensor) -> HeadOutput:
        return self.head.predict(outputs)

    def read(self, outputs: np.ndarray) -> ReadOut:
        """``(B, K)`` outputs in NumPy → the head's answers (what :func:`deepage.answers.answer_batch` reads)."""
        return self.head.read(outputs)


def load_backbone_weights(module: nn.Module, path: str | Path,
                          ignore_prefixes: tuple[str, ...] = ("classifier.", "fc.", "head.", "AuxLogits.")) -> None:
    """Load a local weights file (a state dict, or a dict holding one under ``state_dict``/``model``)
    into ``module``, without executing code (``weights_only=True``).

    Keys of the file's own classifier (``ignore_prefixes``) are dropped; any other missing or unexpected
    key is an error that names them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" … (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        problems = []
        if missing:
            problems.append(f"missing keys: {show(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {show(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatch: {show(mismatched)}")
        raise ValueError(f"weights file {path} does not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state)


def build_from_spec(spec: ModelSpec, pretrained: bool = False, weights: str | Path | None = None) -> AgeModel:
    """Build the model a :class:`ModelSpec` describes (random or pretrained backbone weights). An
    ensemble's spec (name ``"ensemble"``, :mod:`deepage.models.ensemble`) builds its members (random
    weights: its checkpoint holds theirs)."""
    from .ensemble import ENSEMBLE, EnsembleModel

    if spec.name == ENSEMBLE:
        if pretrained or weights is not None:
            raise ValueError("an ensemble is built from its members' checkpoints (deepage ensemble), not from "
                             "pretrained weights")
        return EnsembleModel(spec)
    entry = _entry(spec.name)
    size = spec.preprocessing.input_size
    if size < entry.min_input_size:
        raise ValueError(f"model {spec.name!r} needs input_size >= {entry.min_input_size}, got {size}")
    backbone = entry.builder(input_size=size, pretrained=pretrained, **spec.model_kwargs)
    if weights is not None:
        load_backbone_weights(backbone.module, weights)
    head = create_head(spec.head, backbone.num_features, scheme=spec.scheme, **spec.head_kwargs)
    return AgeModel(spec, backbone, head)


def create_model(name: str, head: str = "dex", num_classes: int | None = None, input_size: int | None = None,
                 pretrained: bool = False, weights: str | Path | None = None, scheme: str | None = None,
                 stored_size: int = 128, crop_pct: float = 0.9, normalization: str | None = None,
                 head_kwargs: dict | None = None, **model_kwargs) -> AgeModel:
    """Build a registered model with a head.

    ``head``: ``classes`` (needs ``num_classes`` 14/8 or ``scheme``), ``dex`` or ``coral`` (which refuse
    ``num_classes``/``scheme``: they answer every scheme). ``head_kwargs``: the head's options
    (:func:`~deepage.models.heads.head_options`); an unknown key is an error.
    ``input_size`` defaults to the model's native size. ``pretrained=True`` takes library weights
    (offline copies first where known, else the hub); ``weights=PATH`` loads a local backbone file.
    """
    entry = _entry(name)
    scheme_name = scheme_for(num_classes, scheme)
    if head == "classes" and scheme_name is None:
        raise ValueError("head 'classes' needs num_classes (14 or 8) or scheme")
    if head != "classes" and scheme_name is not None:
        # Refused rather than ignored: create_model("cnn", num_classes=14) would otherwise quietly return a
        # 101-way DEX model. Age heads answer every scheme (utk14 and utk8) from their age distribution.
        raise ValueError(f"num_classes/scheme apply to head='classes' only; the {head!r} head predicts the age "
                         "and answers every class scheme (utk14, utk8) from it: pass head='classes' for a "
                         f"{num_classes or scheme}-way classifier, or leave num_classes out")
    pre = Preprocessing(input_size=input_size or entry.default_input_size, stored_size=stored_size,
                        crop_pct=crop_pct, normalization=normalization or entry.normalization)
    spec = ModelSpec(name=name, head=head, scheme=scheme_name if head == "classes" else None, preprocessing=pre,
                     model_kwargs=dict(model_kwargs), head_kwargs=dict(head_kwargs or {}))
    return build_from_spec(spec, pretrained=pretrained, weights=weights)

