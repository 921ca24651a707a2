"""One answer path: a batch of model inputs → ages, age intervals and age-group probabilities.

Evaluation (:func:`deepage.evaluation.predictions.collect_predictions`), the
:class:`~deepage.inference.predictor.Predictor` and through it the HTTP service all read a model's answer
with :func:`answer_batch`, so flip test-time augmentation and the reported interval are computed in one
place. The network is given as a function ``logits(x)`` (a PyTorch model, or an ONNX Runtime session
wrapped in one) and the head's ``predict``, so both backends share the path.

>>> answers = answer_batch(model, model.predict, x, tta_flip=True)       # doctest: +SKIP
>>> answers.age.shape, answers.age_interval.shape                         # doctest: +SKIP
((32,), (32, 2))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .models.heads import INTERVAL_QUANTILES, HeadOutput, age_quantiles, average_outputs

__all__ = ["Answers", "answer_batch", "head_output", "INTERVAL_QUANTILES"]

Logits = Callable[[torch.Tensor], torch.Tensor]
HeadPredict = Callable[[torch.Tensor], HeadOutput]


@dataclass
class Answers:
    """A batch of ``B`` answers, on the CPU as NumPy arrays.

    ``age``: ``(B,)`` float32 years, ``None`` for a classes head; ``age_interval``: ``(B, 2)`` float64 years,
    the :data:`INTERVAL_QUANTILES` (10th, 90th percentile) of the head's age distribution, ``None`` when it
    gives none; ``class_probs``: scheme name (``utk14``, ``utk8``, ...) → ``(B, C)`` float32.
    """

    age: np.ndarray | None
    age_interval: np.ndarray | None
    class_probs: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        if self.age is not None:
            return len(self.age)
        return len(next(iter(self.class_probs.values()))) if self.class_probs else 0


def head_output(logits: Logits, predict: HeadPredict, x: torch.Tensor, tta_flip: bool = False) -> HeadOutput:
    """``x (B, 3, H, W)`` normalised → the head's answer; ``tta_flip`` averages the answers for the images
    and their mirror images (twice the model cost)."""
    with torch.inference_mode():
        out = predict(logits(x))
        if tta_flip:
            out = average_outputs(out, predict(logits(torch.flip(x, dims=[3]))))
    return out


def answer_batch(logits: Logits, predict: HeadPredict, x: torch.Tensor, tta_flip: bool = False) -> Answers:
    """:func:`head_output` read into :class:`Answers` (float32 as the model gives them; the interval from
    the age distribution in float64)."""
    out = head_output(logits, predict, x, tta_flip)
    interval = None
    if out.age_probs is not None:
        p = out.age_probs.float().cpu().numpy()
        interval = np.stack([age_quantiles(p, q) for q in INTERVAL_QUANTILES], axis=1)
    age = None if out.age is None else out.age.float().cpu().numpy()
    return Answers(age=age, age_interval=interval,
                   class_probs={k: v.float().cpu().numpy() for k, v in out.class_probs.items()})
