"""Which members make the best ensemble: every subset of some models' age distributions on one split, scored
and compared with a reference subset on the same images (issue 15, item 4).

Each member's distribution is computed once; averaging a subset's is then free, so all ``2^M - 1`` subsets of
``M`` members cost one pass of each model. The answers are the DEX head's (median age, class masses), as
``deepage ensemble`` gives them at temperature 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch

from ..models.heads import DexHead
from .metrics import core_metrics, paired_bootstrap
from .predictions import Predictions

__all__ = ["distribution_predictions", "score_subsets"]


def distribution_predictions(age_true: np.ndarray, probs: np.ndarray) -> Predictions:
    """``(N,)`` true ages and ``(N, 101)`` age distributions → predictions as a DEX head gives them (its own
    ``predict`` on their logarithms: softmax(log p) is p, renormalised)."""
    out = DexHead(1).predict(torch.from_numpy(np.log(np.maximum(probs, 1e-12))).float())
    return Predictions(age_true=np.asarray(age_true), age_pred=out.age.numpy(),
                       class_probs={k: v.numpy() for k, v in out.class_probs.items()})


def score_subsets(age_true: np.ndarray, members: Sequence[np.ndarray], reference: Sequence[int],
                  min_size: int = 1) -> list[dict]:
    """Every subset of ``members`` (each ``(N, 101)``, rows the same images) of at least ``min_size`` members,
    averaged as distributions and scored, best MAE first.

    Each row: ``members`` (sorted indices), ``mae``, ``cs5``, ``utk14``, ``utk8`` (accuracies), and
    ``vs_reference`` = the paired difference of per-image absolute errors against the ``reference`` subset
    (``{"difference": MAE(subset) - MAE(reference), "se", "ci95"}``; negative is better).
    """
    if not members:
        raise ValueError("score_subsets needs at least one member")
    shapes = {m.shape for m in members}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[0] != len(age_true):
        raise ValueError(f"members must be (N, 101) arrays for the same {len(age_true)} images, got {shapes}")
    reference = sorted(set(reference))
    if not reference or not set(reference) <= set(range(len(members))):
        raise ValueError(f"reference {reference}: indices into the {len(members)} members")

    def answers(subset: Sequence[int]) -> Predictions:
        return distribution_predictions(age_true, np.mean([members[i] for i in subset], axis=0))

    ref_error = np.abs(answers(reference).age_pred - age_true)
    rows = []
    for size in range(max(1, min_size), len(members) + 1):
        for subset in combinations(range(len(members)), size):
            preds = answers(subset)
            m = core_metrics(preds)
            rows.append({"members": list(subset), "mae": m["age"]["mae"], "cs5": m["age"]["cs5"],
                         "utk14": m["utk14"]["accuracy"], "utk8": m["utk8"]["accuracy"],
                         "vs_reference": paired_bootstrap(ref_error, np.abs(preds.age_pred - age_true))})
    return sorted(rows, key=lambda r: r["mae"])
