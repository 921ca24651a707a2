"""Which members make the best ensemble: every subset of some models' age distributions on one split, scored
and compared with a reference subset on the same images (issue 15, item 4).

Each member's distribution is computed once; averaging a subset's is then free, so all ``2^M - 1`` subsets of
``M`` members cost one pass of each model. The answers are the DEX head's (median age, class masses), as
``deepage ensemble`` gives them at temperature 1.

:func:`crossfit_weights` asks whether unequal weights would do better than the plain mean, scored on images
the weights were not fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch

from ..models.heads import DexHead
from .metrics import core_metrics, paired_bootstrap
from .predictions import Predictions

__all__ = ["distribution_predictions", "score_subsets", "fit_mixture_weights", "crossfit_weights"]


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


def fit_mixture_weights(age_true: np.ndarray, members: Sequence[np.ndarray], iterations: int = 500) -> np.ndarray:
    """``(M,)`` weights on the simplex that maximise the mean log-likelihood of the true ages under the mixture
    ``sum_k w_k members[k]`` (each ``(N, 101)``). The objective is concave in the weights, so the EM update for
    mixture weights (each weight becomes its mean responsibility) climbs to the one optimum; no step size to
    tune. Starts from equal weights."""
    ages = np.clip(np.asarray(age_true).astype(int), 0, members[0].shape[1] - 1)
    rows = np.arange(len(ages))
    likelihood = np.stack([np.maximum(m[rows, ages], 1e-12) for m in members], axis=1)  # (N, M)
    weights = np.full(len(members), 1.0 / len(members))
    for _ in range(iterations):
        resp = likelihood * weights
        resp /= resp.sum(axis=1, keepdims=True)
        weights = resp.mean(axis=0)
    return weights


def crossfit_weights(age_true: np.ndarray, members: Sequence[np.ndarray], folds: int = 5,
                     seed: int = 0) -> dict:
    """Unequal member weights judged fairly: the images split into ``folds`` parts; each part is answered by
    the weights (:func:`fit_mixture_weights`) fitted on the other parts, so no image is scored by weights that
    saw it. Returns ``weights`` (fitted on every image: what one would ship), ``fold_weights`` (``(folds, M)``),
    ``equal`` and ``weighted`` (``mae``, ``cs5``, ``utk14``, ``utk8`` of the plain mean and of the out-of-fold
    weighted mixture) and ``vs_equal``, the paired difference weighted - equal of per-image absolute errors
    (``{"difference", "se", "ci95"}``; negative is better)."""
    age_true = np.asarray(age_true)
    if len(members) < 2 or folds < 2 or len(age_true) < folds:
        raise ValueError(f"crossfit_weights needs two or more members, two or more folds and an image per fold "
                         f"(got {len(members)} members, {folds} folds, {len(age_true)} images)")
    stack = np.stack(members)  # (M, N, 101)
    part = np.random.default_rng(seed).permutation(len(age_true)) % folds
    mixed = np.empty_like(stack[0])
    fold_weights = []
    for f in range(folds):
        held = part == f
        w = fit_mixture_weights(age_true[~held], [m[~held] for m in members])
        mixed[held] = np.tensordot(w, stack[:, held], axes=1)
        fold_weights.append(w)

    def scored(probs: np.ndarray) -> tuple[dict, np.ndarray]:
        preds = distribution_predictions(age_true, probs)
        m = core_metrics(preds)
        return ({"mae": m["age"]["mae"], "cs5": m["age"]["cs5"], "utk14": m["utk14"]["accuracy"],
                 "utk8": m["utk8"]["accuracy"]}, np.abs(preds.age_pred - age_true))

    equal, equal_error = scored(stack.mean(axis=0))
    weighted, weighted_error = scored(mixed)
    return {"weights": fit_mixture_weights(age_true, members), "fold_weights": np.array(fold_weights),
            "equal": equal, "weighted": weighted, "vs_equal": paired_bootstrap(equal_error, weighted_error)}
