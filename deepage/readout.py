"""How a head's outputs become answers, in NumPy: the one implementation every backend reads through.

A head's raw outputs ``(B, K)`` (from PyTorch or from an ONNX Runtime session) become an age distribution
over 0..100 years, one age from it (:data:`AGE_ESTIMATES`), and every label scheme's class probabilities.
The PyTorch heads' ``predict`` (:mod:`deepage.models.heads`) calls these functions too, so training's
validation, ``deepage evaluate`` and prediction cannot answer differently. The module imports no torch:
``deepage predict`` with an ONNX graph answers without loading PyTorch (about 4 s of every start on a
2-core host).

>>> read = reader_for("dex", estimate="median")
>>> out = read(np.zeros((2, 101), np.float32))      # uniform distributions over 0..100
>>> out.age.tolist(), sorted(out.class_probs)
([50.0, 50.0], ['utk14', 'utk8'])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from .labels import AGE_BINS, MAX_AGE, get_scheme, list_schemes

__all__ = ["ReadOut", "reader_for", "read_classes", "read_dex", "read_coral", "average_readouts", "point_age",
           "age_quantiles", "class_masses", "softmax", "check_estimate", "AGE_ESTIMATES", "INTERVAL_QUANTILES",
           "READ_HEADS", "out_features", "check_temperature"]

READ_HEADS = ("classes", "dex", "coral")
INTERVAL_QUANTILES = (0.1, 0.9)
"""The age interval reported with every estimate: these quantiles of the head's age distribution."""
AGE_ESTIMATES = ("median", "mean")
"""How a distribution over ages becomes one age. ``median``: the smallest age ``a`` with ``P(age <= a) >= 1/2``,
in whole years like the labels; it minimises the expected absolute error (the MAE we report) where the mean
minimises the squared one, and age distributions are skewed (validation MAE of the shipped ensemble 4.435
against 4.504 with the mean: docs/RESULTS.md). ``mean``: the expected value (DEX as published)."""


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float if it is positive, else ``ValueError`` (the DEX head's and its reader's rule)."""
    if not float(temperature) > 0:
        raise ValueError(f"head 'dex': temperature must be positive, got {temperature}")
    return float(temperature)


def check_estimate(estimate: str) -> str:
    """``estimate`` if it is one of :data:`AGE_ESTIMATES`, else ``ValueError`` naming them."""
    if estimate not in AGE_ESTIMATES:
        raise ValueError(f"age estimate {estimate!r} is not one of {AGE_ESTIMATES}")
    return estimate


@dataclass
class ReadOut:
    """A batch of ``B`` answers read from a head's outputs (NumPy, float32).

    ``age``: ``(B,)`` years or ``None`` (a classes head); ``class_probs``: scheme name → ``(B, C)``;
    ``age_probs``: ``(B, 101)`` over ages 0..100 or ``None``; ``estimate``: the :data:`AGE_ESTIMATES` rule that
    made ``age`` from ``age_probs`` (``None`` when ``age`` was made otherwise)."""

    age: np.ndarray | None
    class_probs: dict[str, np.ndarray] = field(default_factory=dict)
    age_probs: np.ndarray | None = None
    estimate: str | None = None


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float32 (the largest value subtracted first, as PyTorch does)."""
    z = np.asarray(x, np.float32)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def point_age(age_probs: np.ndarray, estimate: str = "median") -> np.ndarray:
    """``(B, A)`` distributions over ages ``0..A-1`` → ``(B,)`` float32 years, by ``estimate`` (one of
    :data:`AGE_ESTIMATES`)."""
    probs = np.asarray(age_probs, np.float32)
    if check_estimate(estimate) == "mean":
        return probs @ np.arange(probs.shape[1], dtype=np.float32)
    # the median: the first age whose cumulative mass reaches half of the total (argmax finds the first True)
    reached = np.cumsum(probs, axis=1, dtype=np.float32) >= 0.5 * probs.sum(axis=1, keepdims=True)
    return reached.argmax(axis=1).astype(np.float32)


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


@cache
def _class_matrix(scheme: str, max_age: int) -> np.ndarray:
    matrix = get_scheme(scheme).age_to_class_matrix(max_age)
    matrix.flags.writeable = False  # shared by every caller
    return matrix


def class_masses(age_probs: np.ndarray) -> dict[str, np.ndarray]:
    """``(B, 101)`` age distributions → every built-in scheme's ``(B, C)`` class probabilities (the mass of
    each class's ages)."""
    probs = np.asarray(age_probs, np.float32)
    return {name: probs @ _class_matrix(name, probs.shape[1] - 1) for name in list_schemes()}


def read_classes(outputs: np.ndarray, scheme_name: str) -> ReadOut:
    """A ``classes`` head: ``(B, C)`` logits over the classes of the scheme named ``scheme_name`` → its class
    probabilities (under that name)."""
    return ReadOut(age=None, class_probs={scheme_name: softmax(outputs)})


def read_dex(outputs: np.ndarray, estimate: str = "median", temperature: float = 1.0) -> ReadOut:
    """A ``dex`` head: ``(B, 101)`` logits over ages 0..100 → ``softmax(logits / temperature)``, its
    ``estimate`` and the class masses."""
    probs = softmax(np.asarray(outputs, np.float32) / np.float32(temperature))
    return ReadOut(age=point_age(probs, estimate), class_probs=class_masses(probs), age_probs=probs,
                   estimate=estimate)


def read_coral(outputs: np.ndarray) -> ReadOut:
    """A ``coral`` head: ``(B, 100)`` logits of "age > k", k = 0..99 → age = the sum of their sigmoids, and
    the distribution they imply (differences of the ordinal probabilities, clipped at 0 and renormalised)."""
    logits = np.asarray(outputs, np.float32)
    greater = 1.0 / (1.0 + np.exp(-logits))  # P(age > k)
    ones, zeros = np.ones_like(greater[:, :1]), np.zeros_like(greater[:, :1])
    cdf_above = np.concatenate([ones, greater, zeros], axis=1)  # P(age > k-1) for k = 0..101
    age_probs = np.maximum(cdf_above[:, :-1] - cdf_above[:, 1:], 0)
    age_probs = age_probs / np.maximum(age_probs.sum(axis=1, keepdims=True), 1e-12)
    return ReadOut(age=greater.sum(axis=1), class_probs=class_masses(age_probs), age_probs=age_probs)


_OUT_FEATURES = {"dex": AGE_BINS, "coral": MAX_AGE}


def reader_for(head: str, scheme: str | None = None, **head_kwargs) -> Callable[[np.ndarray], ReadOut]:
    """The function that reads ``head``'s outputs (a spec's ``head``, ``scheme`` and ``head_kwargs``; options
    that only shape training, such as ``sigma`` or ``dropout``, are accepted and ignored)."""
    if head == "classes":
        if scheme is None:
            raise ValueError("head 'classes' needs a label scheme")
        name = get_scheme(scheme).name  # an unknown scheme: the error names it now, not at the first answer

        def read(outputs: np.ndarray) -> ReadOut:
            return read_classes(outputs, name)
    elif head == "dex":
        estimate = check_estimate(head_kwargs.get("estimate", "median"))
        temperature = check_temperature(head_kwargs.get("temperature", 1.0))

        def read(outputs: np.ndarray) -> ReadOut:
            return read_dex(outputs, estimate, temperature)
    elif head == "coral":
        read = read_coral
    else:
        raise ValueError(f"unknown head {head!r}; choose one of {READ_HEADS}")
    return read


def out_features(head: str, scheme: str | None = None) -> int:
    """``K``, the width of ``head``'s outputs."""
    if head == "classes":
        return get_scheme(scheme).num_classes
    if head not in _OUT_FEATURES:
        raise ValueError(f"unknown head {head!r}; choose one of {READ_HEADS}")
    return _OUT_FEATURES[head]


def average_readouts(a: ReadOut, b: ReadOut) -> ReadOut:
    """The mean of two answers for the same images (e.g. an image and its mirror image): of their
    distributions, whose age is then read by the same rule (the median of the mean distribution, not the
    mean of two medians), or of their ages where they were not read from a distribution."""
    age_probs = None if a.age_probs is None else (a.age_probs + b.age_probs) / 2
    if a.estimate is not None and age_probs is not None:
        age = point_age(age_probs, a.estimate)
    else:
        age = None if a.age is None else (a.age + b.age) / 2
    return ReadOut(age=age, class_probs={k: (v + b.class_probs[k]) / 2 for k, v in a.class_probs.items()},
                   age_probs=age_probs, estimate=a.estimate)
