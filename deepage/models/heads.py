"""Output heads: every backbone's ``(B, F)`` features become class logits, an age distribution, or ordinal logits.

=========  ============================  =====================================================
head       output ``(B, K)``             answers
=========  ============================  =====================================================
classes    logits over one label scheme  that scheme's class
dex        logits over ages 0..100       exact age (median, or expected value) and *every* class scheme
coral      100 ordinal logits "age > k"  exact age (sum of probabilities) and every class scheme
=========  ============================  =====================================================

Each head is an ``nn.Module`` with ``loss(outputs, ages)``, ``read(outputs)`` (NumPy in, a
:class:`~deepage.readout.ReadOut` out: :mod:`deepage.readout` holds the one implementation of every answer)
and ``predict(outputs)``, the same answer as a :class:`HeadOutput` of tensors.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import readout
from ..labels import AGE_BINS, MAX_AGE, LabelScheme, get_scheme
from ..readout import AGE_ESTIMATES, INTERVAL_QUANTILES, READ_HEADS, age_quantiles, check_estimate

__all__ = ["HeadOutput", "ClassesHead", "DexHead", "CoralHead", "create_head", "head_options",
           "HEADS", "gaussian_age_targets", "age_quantiles", "INTERVAL_QUANTILES", "AGE_ESTIMATES", "point_age",
           "check_estimate", "ANSWER_OPTIONS"]

HEADS = READ_HEADS

ANSWER_OPTIONS = ("estimate", "temperature")
"""The DEX head's options that change how it answers, not how it trains: ``deepage calibrate`` may set them
on a trained model, and an ensemble takes them from its own spec."""


def point_age(age_probs: torch.Tensor, estimate: str = "median") -> torch.Tensor:
    """``(B, A)`` distributions over ages ``0..A-1`` → ``(B,)`` float32 years, by ``estimate`` (one of
    :data:`AGE_ESTIMATES`): :func:`deepage.readout.point_age` on a tensor (same device)."""
    ages = readout.point_age(age_probs.detach().float().cpu().numpy(), estimate)
    return torch.from_numpy(ages).to(age_probs.device)


@dataclass
class HeadOutput:
    """``age``: ``(B,)`` years or ``None``; ``class_probs``: scheme name → ``(B, C)`` probabilities;
    ``age_probs``: ``(B, 101)`` over ages 0..100 or ``None``; ``estimate``: the :data:`AGE_ESTIMATES` rule
    that made ``age`` from ``age_probs`` (``None`` when ``age`` was made otherwise)."""

    age: torch.Tensor | None
    class_probs: dict[str, torch.Tensor] = field(default_factory=dict)
    age_probs: torch.Tensor | None = None
    estimate: str | None = None


def gaussian_age_targets(ages: torch.Tensor, sigma: float, num_ages: int = AGE_BINS) -> torch.Tensor:
    """``(B,)`` ages → ``(B, num_ages)`` soft labels: a normalised Gaussian of width ``sigma`` years."""
    grid = torch.arange(num_ages, device=ages.device, dtype=torch.float32)
    centres = ages.float().clamp(0, num_ages - 1).unsqueeze(1)
    weights = torch.exp(-0.5 * ((grid - centres) / sigma) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


def _head_output(read: readout.ReadOut, device: torch.device) -> HeadOutput:
    """A NumPy :class:`~deepage.readout.ReadOut` as tensors on ``device``."""
    def tensor(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return HeadOutput(age=tensor(read.age), class_probs={k: tensor(v) for k, v in read.class_probs.items()},
                      age_probs=tensor(read.age_probs), estimate=read.estimate)


def _numpy(outputs: torch.Tensor) -> np.ndarray:
    return outputs.detach().float().cpu().numpy()


class ClassesHead(nn.Module):
    """Linear classifier over the classes of ``scheme``. Loss: cross-entropy (optional label smoothing,
    optional ``(C,)`` class weights, e.g. inverse class frequencies).

    ``class_weights`` is a plain list so that it lives in the model's spec (and so in every checkpoint)
    like any other head option; it only affects the loss.
    """

    kind = "classes"

    def __init__(self, in_features: int, scheme: LabelScheme, dropout: float = 0.0,
                 label_smoothing: float = 0.0, class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.scheme = scheme
        self.label_smoothing = label_smoothing
        weights = torch.ones(scheme.num_classes) if class_weights is None else torch.tensor(class_weights,
                                                                                            dtype=torch.float32)
        if weights.shape != (scheme.num_classes,):
            raise ValueError(f"head 'classes': class_weights has {weights.numel()} values, scheme "
                             f"{scheme.name!r} has {scheme.num_classes} classes")
        self.register_buffer("class_weights", weights, persistent=False)
        self.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, scheme.num_classes))

    @property
    def out_features(self) -> int:
        return self.scheme.num_classes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def loss(self, outputs: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        target = self.scheme.classify(ages)
        return F.cross_entropy(outputs.float(), target, weight=self.class_weights,
                               label_smoothing=self.label_smoothing)

    def read(self, outputs: np.ndarray) -> readout.ReadOut:
        """``(B, C)`` outputs in NumPy → the answers (:func:`deepage.readout.read_classes`)."""
        return readout.read_classes(outputs, self.scheme.name)

    def predict(self, outputs: torch.Tensor) -> HeadOutput:
        return _head_output(self.read(_numpy(outputs)), outputs.device)


class DexHead(nn.Module):
    """Softmax over ages 0..100 (Rothe et al., DEX); the age is the distribution's median or expected value.

    Loss: KL divergence to Gaussian soft labels (``sigma`` years) plus ``l1_weight`` x |expected - true|,
    which ties the distribution's mean to the age. The answer is the distribution's ``estimate``
    (:data:`AGE_ESTIMATES`: its median by default, which gives the lower MAE). ``temperature``: the
    distribution is ``softmax(logits / temperature)`` when answering (not in the loss); ``deepage calibrate
    --temperature`` fits it on validation so that the reported interval holds what it says.
    """

    kind = "dex"

    def __init__(self, in_features: int, dropout: float = 0.0, sigma: float = 2.0, l1_weight: float = 0.05,
                 estimate: str = "median", temperature: float = 1.0) -> None:
        super().__init__()
        check_estimate(estimate)
        self.sigma, self.l1_weight, self.estimate = sigma, l1_weight, estimate
        self.temperature = readout.check_temperature(temperature)
        self.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, AGE_BINS))
        self.register_buffer("ages", torch.arange(AGE_BINS, dtype=torch.float32), persistent=False)

    @property
    def out_features(self) -> int:
        return readout.out_features(self.kind)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def loss(self, outputs: torch.Tensor, ages: torch.Tensor, teacher_probs: torch.Tensor | None = None,
             teacher_weight: float = 0.0) -> torch.Tensor:
        """KL to the soft label plus the L1 term. Distillation: ``teacher_probs`` ``(B, 101)`` (an ensemble's
        averaged age distributions) mixed into the target with ``teacher_weight`` in [0, 1]."""
        log_probs = outputs.float().log_softmax(dim=1)
        target = gaussian_age_targets(ages, self.sigma)
        if teacher_probs is not None and teacher_weight > 0:
            target = (1 - teacher_weight) * target + teacher_weight * teacher_probs.to(target)
        kl = F.kl_div(log_probs, target, reduction="batchmean")
        expected = (log_probs.exp() * self.ages).sum(dim=1)
        return kl + self.l1_weight * (expected - ages.float().clamp(max=MAX_AGE)).abs().mean()

    def predict(self, outputs: torch.Tensor) -> HeadOutput:
        return _head_output(self.read(_numpy(outputs)), outputs.device)

    def read(self, outputs: np.ndarray) -> readout.ReadOut:
        """``(B, 101)`` outputs in NumPy → the answers at this head's estimate and temperature
        (:func:`deepage.readout.read_dex`)."""
        return readout.read_dex(outputs, self.estimate, self.temperature)


class CoralHead(nn.Module):
    """Ordinal regression (CORAL, Cao et al. 2020): one shared weight vector and 100 ordered biases give
    logits for "age > k", k = 0..99. Age = sum of the sigmoids."""

    kind = "coral"

    def __init__(self, in_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, 1, bias=False)
        self.biases = nn.Parameter(torch.linspace(2.0, -2.0, MAX_AGE))

    @property
    def out_features(self) -> int:
        return readout.out_features(self.kind)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features)) + self.biases

    def loss(self, outputs: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        thresholds = torch.arange(MAX_AGE, device=ages.device)
        levels = (ages.unsqueeze(1) > thresholds).float()
        return F.binary_cross_entropy_with_logits(outputs.float(), levels, reduction="mean")

    def predict(self, outputs: torch.Tensor) -> HeadOutput:
        return _head_output(self.read(_numpy(outputs)), outputs.device)

    def read(self, outputs: np.ndarray) -> readout.ReadOut:
        """``(B, 100)`` outputs in NumPy → the answers (:func:`deepage.readout.read_coral`)."""
        return readout.read_coral(outputs)


_HEAD_CLASSES: dict[str, type[nn.Module]] = {"classes": ClassesHead, "dex": DexHead, "coral": CoralHead}


def head_options(kind: str) -> dict[str, object]:
    """The options (``head_kwargs``) a head takes, with their defaults: ``head_options("coral")`` →
    ``{"dropout": 0.0}``."""
    if kind not in _HEAD_CLASSES:
        raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")
    params = inspect.signature(_HEAD_CLASSES[kind].__init__).parameters
    return {name: p.default for name, p in params.items() if name not in ("self", "in_features", "scheme")}


def create_head(kind: str, in_features: int, scheme: str | LabelScheme | None = None, **kwargs) -> nn.Module:
    """A head by name; ``classes`` needs a ``scheme`` (``utk14``, ``utk8`` or custom edges).

    ``kwargs`` are the head's options (see :func:`head_options`); a key the head does not take is an error
    naming the valid ones, so a misspelt ``sigmaa`` cannot train unnoticed with the default.
    """
    valid = head_options(kind)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"head {kind!r}: unknown option(s) {unknown}; valid: {sorted(valid)}")
    if kind == "classes":
        if scheme is None:
            raise ValueError("head 'classes' needs a label scheme (num_classes=14 or 8, or scheme=...)")
        return ClassesHead(in_features, get_scheme(scheme), **kwargs)
    return _HEAD_CLASSES[kind](in_features, **kwargs)
