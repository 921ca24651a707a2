"""Output heads: every backbone's ``(B, F)`` features become class logits, an age distribution, or ordinal logits.

=========  ============================  =====================================================
head       output ``(B, K)``             answers
=========  ============================  =====================================================
classes    logits over one label scheme  that scheme's class
dex        logits over ages 0..100       exact age (median, or expected value) and *every* class scheme
coral      100 ordinal logits "age > k"  exact age (sum of probabilities) and every class scheme
=========  ============================  =====================================================

Each head is an ``nn.Module`` with ``loss(outputs, ages)`` and ``predict(outputs)``; ``predict`` returns a
:class:`HeadOutput` with whatever the head can answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..labels import AGE_BINS, MAX_AGE, LabelScheme, get_scheme, list_schemes

__all__ = ["HeadOutput", "average_outputs", "ClassesHead", "DexHead", "CoralHead", "create_head", "head_options",
           "HEADS", "gaussian_age_targets", "age_quantiles", "INTERVAL_QUANTILES", "AGE_ESTIMATES", "point_age",
           "check_estimate", "ANSWER_OPTIONS"]

HEADS = ("classes", "dex", "coral")
INTERVAL_QUANTILES = (0.1, 0.9)
"""The age interval reported with every estimate: these quantiles of the head's age distribution."""
AGE_ESTIMATES = ("median", "mean")
"""How a distribution over ages becomes one age. ``median``: the smallest age ``a`` with ``P(age <= a) >= 1/2``,
in whole years like the labels; it minimises the expected absolute error (the MAE we report) where the mean
minimises the squared one, and age distributions are skewed (validation MAE of the shipped ensemble 4.435
against 4.504 with the mean: docs/RESULTS.md). ``mean``: the expected value (DEX as published)."""


ANSWER_OPTIONS = ("estimate", "temperature")
"""The DEX head's options that change how it answers, not how it trains: ``deepage calibrate`` may set them
on a trained model, and an ensemble takes them from its own spec."""


def check_estimate(estimate: str) -> str:
    """``estimate`` if it is one of :data:`AGE_ESTIMATES`, else ``ValueError`` naming them."""
    if estimate not in AGE_ESTIMATES:
        raise ValueError(f"age estimate {estimate!r} is not one of {AGE_ESTIMATES}")
    return estimate


def point_age(age_probs: torch.Tensor, estimate: str = "median") -> torch.Tensor:
    """``(B, A)`` distributions over ages ``0..A-1`` → ``(B,)`` float32 years, by ``estimate`` (one of
    :data:`AGE_ESTIMATES`)."""
    probs = age_probs.float()
    if check_estimate(estimate) == "mean":
        return probs @ torch.arange(probs.shape[1], dtype=probs.dtype, device=probs.device)
    # the median: the first age whose cumulative mass reaches half of the total (argmax finds the first True)
    reached = probs.cumsum(dim=1) >= 0.5 * probs.sum(dim=1, keepdim=True)
    return reached.float().argmax(dim=1).to(probs.dtype)


@dataclass
class HeadOutput:
    """``age``: ``(B,)`` years or ``None``; ``class_probs``: scheme name → ``(B, C)`` probabilities;
    ``age_probs``: ``(B, 101)`` over ages 0..100 or ``None``; ``estimate``: the :data:`AGE_ESTIMATES` rule
    that made ``age`` from ``age_probs`` (``None`` when ``age`` was made otherwise)."""

    age: torch.Tensor | None
    class_probs: dict[str, torch.Tensor] = field(default_factory=dict)
    age_probs: torch.Tensor | None = None
    estimate: str | None = None


def age_quantiles(age_probs: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` of distributions over ages 0..A-1: ``(N, A)`` → ``(N,)`` years (``(A,)`` → scalar array).

    Age ``a`` is spread evenly over ``[a - 0.5, a + 0.5]``, so a distribution with all its mass on 30 has
    its 10th percentile at 29.6 and its 90th at 30.4.
    """
    probs = np.asarray(age_probs, np.float64)
    flat = probs.reshape(-1, probs.shape[-1])
    cdf = np.cumsum(flat, axis=1)
    target = q * cdf[:, -1]
    k = np.minimum((cdf < target[:, None]).sum(axis=1), flat.shape[1] - 1)  # first age with cdf >= target
    rows = np.arange(len(flat))
    below = np.where(k > 0, cdf[rows, np.maximum(k - 1, 0)], 0.0)
    frac = (target - below) / np.maximum(flat[rows, k], 1e-12)
    out = np.clip(k - 0.5 + frac, 0.0, flat.shape[1] - 1)
    return out.reshape(probs.shape[:-1])


def average_outputs(a: HeadOutput, b: HeadOutput) -> HeadOutput:
    """The mean of two predictions of the same images (e.g. an image and its mirror image): of their
    distributions, whose age is then read by the same rule (the median of the mean distribution, not the
    mean of two medians), or of their ages where they were not read from a distribution."""
    age_probs = None if a.age_probs is None else (a.age_probs + b.age_probs) / 2
    if a.estimate is not None and age_probs is not None:
        age = point_age(age_probs, a.estimate)
    else:
        age = None if a.age is None else (a.age + b.age) / 2
    return HeadOutput(age=age, class_probs={k: (v + b.class_probs[k]) / 2 for k, v in a.class_probs.items()},
                      age_probs=age_probs, estimate=a.estimate)


def gaussian_age_targets(ages: torch.Tensor, sigma: float, num_ages: int = AGE_BINS) -> torch.Tensor:
    """``(B,)`` ages → ``(B, num_ages)`` soft labels: a normalised Gaussian of width ``sigma`` years."""
    grid = torch.arange(num_ages, device=ages.device, dtype=torch.float32)
    centres = ages.float().clamp(0, num_ages - 1).unsqueeze(1)
    weights = torch.exp(-0.5 * ((grid - centres) / sigma) ** 2)
    return weights / weights.sum(dim=1, keepdim=True)


def _age_distribution_to_classes(age_probs: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        name: age_probs @ get_scheme(name).age_to_class_matrix().to(age_probs) for name in list_schemes()
    }


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

    def predict(self, outputs: torch.Tensor) -> HeadOutput:
        return HeadOutput(age=None, class_probs={self.scheme.name: outputs.float().softmax(dim=1)})


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
        if not temperature > 0:
            raise ValueError(f"head 'dex': temperature must be positive, got {temperature}")
        self.sigma, self.l1_weight, self.estimate, self.temperature = sigma, l1_weight, estimate, float(temperature)
        self.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, AGE_BINS))
        self.register_buffer("ages", torch.arange(AGE_BINS, dtype=torch.float32), persistent=False)

    @property
    def out_features(self) -> int:
        return AGE_BINS

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
        probs = (outputs.float() / self.temperature).softmax(dim=1)
        return HeadOutput(age=point_age(probs, self.estimate), class_probs=_age_distribution_to_classes(probs),
                          age_probs=probs, estimate=self.estimate)


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
        return MAX_AGE

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features)) + self.biases

    def loss(self, outputs: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        thresholds = torch.arange(MAX_AGE, device=ages.device)
        levels = (ages.unsqueeze(1) > thresholds).float()
        return F.binary_cross_entropy_with_logits(outputs.float(), levels, reduction="mean")

    def predict(self, outputs: torch.Tensor) -> HeadOutput:
        greater = outputs.float().sigmoid()  # P(age > k), k = 0..99
        ones = torch.ones_like(greater[:, :1])
        zeros = torch.zeros_like(greater[:, :1])
        cdf_above = torch.cat([ones, greater, zeros], dim=1)  # P(age > k-1) for k = 0..101
        age_probs = (cdf_above[:, :-1] - cdf_above[:, 1:]).clamp(min=0)
        age_probs = age_probs / age_probs.sum(dim=1, keepdim=True).clamp(min=1e-12)
        return HeadOutput(age=greater.sum(dim=1), class_probs=_age_distribution_to_classes(age_probs),
                          age_probs=age_probs)


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
