"""Scoring every subset of an ensemble's members against a reference subset."""

import numpy as np
import pytest

from deepage.evaluation.subsets import crossfit_weights, distribution_predictions, fit_mixture_weights, score_subsets


def _peaked(ages: np.ndarray, width: float = 1.0) -> np.ndarray:
    """``(N, 101)`` Gaussian age distributions centred on ``ages``."""
    grid = np.arange(101)[None, :]
    p = np.exp(-0.5 * ((grid - ages[:, None]) / width) ** 2)
    return p / p.sum(axis=1, keepdims=True)


def test_distribution_predictions_answers_the_median_and_class_masses():
    ages = np.array([3.0, 30.0, 70.0])
    preds = distribution_predictions(ages, _peaked(ages))
    np.testing.assert_allclose(preds.age_pred, ages, atol=0.51)
    assert preds.class_probs["utk14"].argmax(1).tolist() == [0, 5, 13]


def test_score_subsets_ranks_every_subset_and_pairs_it_with_the_reference():
    rng = np.random.default_rng(0)
    ages = rng.integers(5, 80, size=200).astype(float)
    right = _peaked(ages)
    old = _peaked(np.clip(ages + 10, 0, 100))
    young = _peaked(np.clip(ages - 10, 0, 100))
    rows = score_subsets(ages, [old, right, young], reference=[0])

    assert len(rows) == 7
    assert [r["mae"] for r in rows] == sorted(r["mae"] for r in rows)
    best = rows[0]
    assert best["members"] == [1] and best["mae"] < 0.6
    assert best["vs_reference"]["difference"] == pytest.approx(best["mae"] - 10, abs=0.6)
    reference_row = next(r for r in rows if r["members"] == [0])
    assert reference_row["vs_reference"]["difference"] == 0 and reference_row["vs_reference"]["se"] == 0
    # old and young averaged cancel in the median: far better than either alone
    both = next(r for r in rows if r["members"] == [0, 2])
    assert both["mae"] < 9 and both["vs_reference"]["difference"] < -1
    assert score_subsets(ages, [old, right, young], reference=[0, 1], min_size=2)[0]["members"] != [1]


def test_score_subsets_rejects_bad_members_and_references():
    ages = np.array([20.0, 40.0])
    with pytest.raises(ValueError, match="reference"):
        score_subsets(ages, [_peaked(ages)], reference=[3])
    with pytest.raises(ValueError, match="same 2 images"):
        score_subsets(ages, [_peaked(ages), _peaked(np.array([1.0, 2.0, 3.0]))], reference=[0])
    with pytest.raises(ValueError, match="at least one"):
        score_subsets(ages, [], reference=[0])


def test_mixture_weights_find_the_member_that_knows_the_age():
    rng = np.random.default_rng(1)
    ages = rng.integers(5, 80, size=300).astype(float)
    right = _peaked(ages, width=3.0)
    wrong = _peaked(rng.integers(5, 80, size=300).astype(float), width=3.0)  # unrelated to the true age
    w = fit_mixture_weights(ages, [right, wrong])
    assert w.sum() == pytest.approx(1.0) and w[0] > 0.95
    # two equally good members keep about equal weights
    w_even = fit_mixture_weights(ages, [right, right.copy()])
    np.testing.assert_allclose(w_even, [0.5, 0.5], atol=1e-9)


def test_crossfit_weights_score_out_of_fold_against_the_plain_mean():
    rng = np.random.default_rng(2)
    ages = rng.integers(5, 80, size=400).astype(float)
    good = _peaked(np.clip(ages + rng.normal(0, 2, 400), 0, 100), width=3.0)
    noisy = _peaked(np.clip(ages + rng.normal(0, 15, 400), 0, 100), width=3.0)
    fit = crossfit_weights(ages, [good, noisy], folds=4)
    assert fit["fold_weights"].shape == (4, 2) and fit["weights"][0] > fit["weights"][1]
    assert fit["weighted"]["mae"] < fit["equal"]["mae"]
    d = fit["vs_equal"]
    assert d["difference"] == pytest.approx(fit["weighted"]["mae"] - fit["equal"]["mae"], abs=1e-9)
    assert d["difference"] < -2 * d["se"]
    with pytest.raises(ValueError, match="two or more members"):
        crossfit_weights(ages, [good], folds=4)
