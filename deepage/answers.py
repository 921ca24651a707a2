"""One answer path: a batch of model inputs → ages, age intervals and age-group probabilities.

Evaluation (:func:`deepage.evaluation.predictions.collect_predictions`), the
:class:`~deepage.inference.predictor.Predictor` and through it the HTTP service all read a model's answer
with :func:`answer_batch`, so flip test-time augmentation and the reported interval are computed in one
place. The network is given as a function ``logits(x)`` (a PyTorch model, or an ONNX Runtime session
wrapped in one) and the head's reader (``model.read``, or :func:`deepage.readout.reader_for` built from a
spec), which turns its outputs into answers in NumPy, so both backends share the path. The module imports
no torch: a PyTorch input is handled as a tensor only when one is given.

>>> answers = answer_batch(model, model.read, x, tta_flip=True)          # doctest: +SKIP
>>> answers.age.shape, answers.age_interval.shape                         # doctest: +SKIP
((32,), (32, 2))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .readout import INTERVAL_QUANTILES, ReadOut, age_quantiles, average_readouts

__all__ = ["Answers", "answer_batch", "read_batch", "INTERVAL_QUANTILES", "AgeGate", "p_at_least", "decide",
           "choose_age_gate", "check_adult_age", "DECISIONS", "DEFAULT_ADULT_AGE", "DEFAULT_MAX_MINORS_PASSED",
           "DEFAULT_MAX_ADULTS_HELD", "mirror"]

Logits = Callable[[Any], Any]
"""``x (B, 3, H, W)`` → ``(B, K)`` outputs: NumPy arrays, or PyTorch tensors for a PyTorch model."""
Read = Callable[[np.ndarray], ReadOut]


@dataclass
class Answers:
    """A batch of ``B`` answers, on the CPU as NumPy arrays.

    ``age``: ``(B,)`` float32 years, ``None`` for a classes head; ``age_interval``: ``(B, 2)`` float64 years,
    the :data:`INTERVAL_QUANTILES` (10th, 90th percentile) of the head's age distribution, ``None`` when it
    gives none; ``class_probs``: scheme name (``utk14``, ``utk8``, ...) → ``(B, C)`` float32; ``age_probs``:
    ``(B, 101)`` float32, the head's distribution over ages 0..100 (``None`` when it gives none).
    """

    age: np.ndarray | None
    age_interval: np.ndarray | None
    class_probs: dict[str, np.ndarray] = field(default_factory=dict)
    age_probs: np.ndarray | None = None

    def __len__(self) -> int:
        if self.age is not None:
            return len(self.age)
        return len(next(iter(self.class_probs.values()))) if self.class_probs else 0


def mirror(x):
    """``x (B, C, H, W)`` mirrored left-right: a PyTorch tensor stays one, a NumPy array comes back contiguous."""
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x[..., ::-1])
    return x.flip(dims=[3])


def _as_numpy(outputs) -> np.ndarray:
    """A model's ``(B, K)`` outputs (a NumPy array or a PyTorch tensor, any device and float type) in float32."""
    if not isinstance(outputs, np.ndarray):
        outputs = outputs.detach().float().cpu().numpy()
    return np.asarray(outputs, np.float32)


def read_batch(logits: Logits, read: Read, x, tta_flip: bool = False) -> ReadOut:
    """``x (B, 3, H, W)`` normalised → the head's answer; ``tta_flip`` averages the answers for the images
    and their mirror images (twice the model cost)."""
    out = read(_as_numpy(logits(x)))
    if tta_flip:
        out = average_readouts(out, read(_as_numpy(logits(mirror(x)))))
    return out


def answer_batch(logits: Logits, read: Read, x, tta_flip: bool = False) -> Answers:
    """:func:`read_batch` read into :class:`Answers` (float32 as the model gives them; the interval from
    the age distribution in float64)."""
    out = read_batch(logits, read, x, tta_flip)
    interval = None
    if out.age_probs is not None:
        interval = np.stack([age_quantiles(out.age_probs, q) for q in INTERVAL_QUANTILES], axis=1)
    return Answers(age=out.age, age_interval=interval, class_probs=dict(out.class_probs), age_probs=out.age_probs)


# ---- minor or adult: P(age >= A) and a decision at two thresholds chosen on validation data --------------
DECISIONS = ("adult", "minor", "unsure")
DEFAULT_ADULT_AGE = 18
DEFAULT_MAX_MINORS_PASSED = 0.01
"""Default target: at most 1 % of the minors of the calibration split decided ``adult``."""
DEFAULT_MAX_ADULTS_HELD = 0.05
"""Default target: at most 5 % of the adults of the calibration split decided ``minor``."""


def check_adult_age(adult_age: int) -> int:
    """``adult_age`` as an ``int`` in ``1..100`` (the ages a head's distribution covers), else ``ValueError``."""
    if isinstance(adult_age, bool) or int(adult_age) != adult_age or not 1 <= int(adult_age) <= 100:
        raise ValueError(f"adult age must be a whole number of years from 1 to 100, got {adult_age!r}")
    return int(adult_age)


def p_at_least(age_probs: np.ndarray, adult_age: int) -> np.ndarray:
    """``P(age >= adult_age)`` from distributions over whole years: ``(N, 101)`` → ``(N,)`` float64
    (``(101,)`` → a 0-d array).

    Bin ``a`` (0..100) is the probability of being ``a`` completed years old, as UTKFace labels ages (17 is
    under 18; the last bin holds 100 and over), so this is the sum of bins ``adult_age..100``, divided by the
    row's total (1 up to rounding), in float64.

    >>> p = np.zeros(101); p[17], p[18], p[40] = 0.25, 0.25, 0.5
    >>> float(p_at_least(p, 18)), float(p_at_least(p, 19))
    (0.75, 0.5)
    """
    adult_age = check_adult_age(adult_age)
    probs = np.asarray(age_probs, np.float64)
    total = probs.sum(axis=-1)
    return np.clip(probs[..., adult_age:].sum(axis=-1) / np.maximum(total, 1e-12), 0.0, 1.0)


def decide(p_adult: np.ndarray, adult_threshold: float, minor_threshold: float) -> np.ndarray:
    """``(N,)`` ``P(age >= A)`` → ``(N,)`` strings: ``adult`` where ``p > adult_threshold``, ``minor`` where
    ``p < minor_threshold``, ``unsure`` otherwise (``minor_threshold <= adult_threshold``).

    >>> decide(np.array([0.99, 0.5, 0.01]), 0.9, 0.2).tolist()
    ['adult', 'unsure', 'minor']
    """
    if minor_threshold > adult_threshold:
        raise ValueError(f"minor threshold {minor_threshold} is above the adult threshold {adult_threshold}")
    p = np.asarray(p_adult, np.float64)
    return np.where(p > adult_threshold, "adult", np.where(p < minor_threshold, "minor", "unsure"))


@dataclass(frozen=True)
class AgeGate:
    """An operating point of the minor/adult check for one ``adult_age``, stored with the model (a
    checkpoint's ``age_gates``, an ONNX file's metadata) and never recomputed at prediction time.

    ``adult`` above ``adult_threshold`` on ``P(age >= adult_age)``, ``minor`` below ``minor_threshold``,
    ``unsure`` between. On the calibration data (``split`` of ``data``, split fingerprint
    ``data_fingerprint``; ``n_minors`` faces under ``adult_age``, ``n_adults`` at or over it) the thresholds
    passed ``minors_passed`` of the minors as adults (target at most ``max_minors_passed``), held
    ``adults_held`` of the adults as minors (target at most ``max_adults_held``) and left ``unsure`` of all
    faces undecided. ``crossed``: the two targets could both be met with one threshold (no unsure band).
    ``weights``: digest of the weights they were chosen for (:func:`deepage.checkpoint.weights_digest`).
    """

    adult_age: int
    adult_threshold: float
    minor_threshold: float
    max_minors_passed: float
    max_adults_held: float
    minors_passed: float
    adults_held: float
    unsure: float
    n_minors: int
    n_adults: int
    crossed: bool = False
    split: str = ""
    data: str = ""
    data_fingerprint: str = ""
    checkpoint_fingerprint: str = ""
    weights: str = ""
    tta_flip: bool = False

    def decide(self, p_adult: np.ndarray) -> np.ndarray:
        """:func:`decide` at this operating point."""
        return decide(p_adult, self.adult_threshold, self.minor_threshold)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AgeGate:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _rates(minor: np.ndarray, decision: np.ndarray) -> tuple[float, float, float]:
    """(share of minors decided adult, share of adults decided minor, share of all undecided)."""
    return (float(np.mean(decision[minor] == "adult")), float(np.mean(decision[~minor] == "minor")),
            float(np.mean(decision == "unsure")))


def choose_age_gate(age_true: np.ndarray, p_adult: np.ndarray, adult_age: int,
                    max_minors_passed: float = DEFAULT_MAX_MINORS_PASSED,
                    max_adults_held: float = DEFAULT_MAX_ADULTS_HELD) -> AgeGate:
    """The two thresholds on ``(N,)`` ``p_adult`` for faces of true ages ``age_true`` ``(N,)`` (the
    validation split): ``adult_threshold`` the lowest ``t`` with at most ``max_minors_passed`` of the minors
    (age < ``adult_age``) at ``p > t``; ``minor_threshold`` the highest ``t`` with at most ``max_adults_held``
    of the adults at ``p < t``. With ``k = floor(rate * n)`` faces allowed through, these are the minors'
    ``(k+1)``-th largest and the adults' ``(k+1)``-th smallest ``p``, so both rates hold on this data exactly,
    ties included. When they cross (``minor_threshold > adult_threshold``) one threshold between them meets
    both targets: both become their midpoint and nothing is ``unsure``.
    """
    adult_age = check_adult_age(adult_age)
    for name, rate in (("max_minors_passed", max_minors_passed), ("max_adults_held", max_adults_held)):
        if not 0 <= rate < 1:
            raise ValueError(f"{name} must be a share in [0, 1), got {rate}")
    age_true, p = np.asarray(age_true), np.asarray(p_adult, np.float64)
    if age_true.shape != p.shape or p.ndim != 1:
        raise ValueError(f"age_true {age_true.shape} and p_adult {p.shape} must be two (N,) arrays")
    minor = age_true < adult_age
    minors, adults = np.sort(p[minor])[::-1], np.sort(p[~minor])
    if not len(minors) or not len(adults):
        raise ValueError(f"choosing thresholds for adult age {adult_age} needs faces on both sides: got "
                         f"{len(minors)} under {adult_age} and {len(adults)} aged {adult_age} or more")
    # + 1e-9: 0.01 * 300 is 2.9999999999999996 in floating point, and 3 minors may pass
    k_minors = min(int(np.floor(max_minors_passed * len(minors) + 1e-9)), len(minors) - 1)
    k_adults = min(int(np.floor(max_adults_held * len(adults) + 1e-9)), len(adults) - 1)
    adult_t, minor_t = float(minors[k_minors]), float(adults[k_adults])
    crossed = minor_t > adult_t
    if crossed:
        adult_t = minor_t = (adult_t + minor_t) / 2
    passed, held, unsure = _rates(minor, decide(p, adult_t, minor_t))
    return AgeGate(adult_age=adult_age, adult_threshold=adult_t, minor_threshold=minor_t,
                   max_minors_passed=float(max_minors_passed), max_adults_held=float(max_adults_held),
                   minors_passed=passed, adults_held=held, unsure=unsure, n_minors=int(len(minors)),
                   n_adults=int(len(adults)), crossed=bool(crossed))
