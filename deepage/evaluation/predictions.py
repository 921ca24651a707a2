"""Run a model over batches and keep what evaluation needs; no sample is dropped."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..answers import answer_batch
from ..data.loader import Batch
from ..models.registry import AgeModel

__all__ = ["Predictions", "collect_predictions"]


@dataclass
class Predictions:
    """``age_true``: ``(N,)`` years; ``age_pred``: ``(N,)`` years or ``None`` (classes heads);
    ``class_probs``: scheme → ``(N, C)``; ``index``: ``(N,)`` positions in the evaluated split;
    ``age_interval``: ``(N, 2)`` the reported interval (10th and 90th percentile of the age distribution)
    or ``None`` when the head gives no distribution; ``age_probs``: ``(N, 101)`` float32, that distribution
    over ages 0..100 (what the minor/adult check reads), or ``None``."""

    age_true: np.ndarray
    age_pred: np.ndarray | None
    class_probs: dict[str, np.ndarray] = field(default_factory=dict)
    index: np.ndarray | None = None
    age_interval: np.ndarray | None = None
    age_probs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.age_true)


@torch.no_grad()
def collect_predictions(model: AgeModel, batches: Iterable[Batch], device: str | torch.device = "cpu",
                        tta_flip: bool = False, channels_last: bool = False) -> Predictions:
    """Predictions for every batch (the loader must not drop the last partial batch)."""
    model.eval()
    ages_true, ages_pred, index, intervals, age_probs = [], [], [], [], []
    probs: dict[str, list] = {}
    for batch in batches:
        x = batch.x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = answer_batch(model, model.read, x, tta_flip)  # the Predictor's answer path too
        if out.age_interval is not None:
            intervals.append(out.age_interval)
        if out.age_probs is not None:
            age_probs.append(out.age_probs)
        ages_true.append(batch.age.numpy())
        index.append(batch.index.numpy())
        if out.age is not None:
            ages_pred.append(out.age)
        for k, v in out.class_probs.items():
            probs.setdefault(k, []).append(v)
    cat = np.concatenate
    return Predictions(
        age_true=cat(ages_true) if ages_true else np.zeros(0),
        age_pred=cat(ages_pred) if ages_pred else None,
        class_probs={k: cat(v) for k, v in probs.items()},
        index=cat(index) if index else np.zeros(0, int),
        age_interval=cat(intervals) if intervals else None,
        age_probs=cat(age_probs) if age_probs else None,
    )
