"""Exact-value tests of the evaluation metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from deepage.evaluation.metrics import (
    age_metrics,
    classification_metrics,
    core_metrics,
    cs_curve,
    cumulative_score,
    expected_calibration_error,
    full_metrics,
    json_safe,
    mae,
    one_off_accuracy,
    one_vs_rest_auc,
    paired_bootstrap,
    prediction_metrics,
    reliability_bins,
)
from deepage.evaluation.predictions import Predictions


def test_age_metrics_hand_computed():
    true = np.array([10, 20, 30, 40])
    pred = np.array([12.0, 20.0, 24.0, 45.5])  # errors 2, 0, -6, 5.5
    assert mae(true, pred) == pytest.approx(13.5 / 4)
    assert cumulative_score(true, pred, 5) == pytest.approx(0.5)  # 2 and 0 (5.5 and 6 exceed 5)
    assert cumulative_score(true, pred, 6) == pytest.approx(1.0)  # |-6| <= 6 counts
    assert cs_curve(true, pred, 10) == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 1, 1, 1, 1, 1])
    m = age_metrics(true, pred)
    assert m["mae"] == pytest.approx(3.375)
    assert m["cs5"] == pytest.approx(0.5)
    assert len(m["cs_curve"]) == 11
    assert m["bias"] == pytest.approx((2 + 0 - 6 + 5.5) / 4)
    assert m["rmse"] == pytest.approx(np.sqrt((4 + 0 + 36 + 30.25) / 4))
    assert m["median_ae"] == pytest.approx((2 + 5.5) / 2)
    assert "interval_coverage" not in m
    interval = np.array([[11, 14], [20, 20], [25, 35], [41, 50]])  # holds 20 and 30 (edges count), not 10, 40
    m = age_metrics(true, pred, interval)
    assert m["interval_coverage"] == pytest.approx(0.5)
    assert m["interval_width"] == pytest.approx((3 + 0 + 10 + 9) / 4)


def test_one_off_accuracy_counts_adjacent_classes():
    assert one_off_accuracy(np.array([0, 3, 5, 7]), np.array([1, 3, 3, 8])) == pytest.approx(0.75)


def _toy():
    # 8 samples, 3 classes; class 2 is never the truth (so it has no ROC curve) but is predicted once.
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.6, 0.3, 0.1],
            [0.2, 0.5, 0.3],  # wrong: 1
            [0.1, 0.8, 0.1],
            [0.3, 0.6, 0.1],
            [0.5, 0.4, 0.1],  # wrong: 0
            [0.2, 0.2, 0.6],  # wrong: 2
            [0.9, 0.05, 0.05],
        ]
    )
    return y, probs


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_classification_metrics_match_sklearn_and_hand_values():
    y, probs = _toy()
    pred = probs.argmax(1)
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    # Macro over the classes seen in truth or prediction (a, b, c): sklearn's default label set.
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["macro_precision"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
    assert m["macro_recall"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted", zero_division=0))
    # Hand: class a predicted 4 times (3 right), true 4 times; b predicted 3 times (2 right), true 4 times.
    assert m["per_class"]["a"] == {
        "precision": pytest.approx(0.75),
        "recall": pytest.approx(0.75),
        "f1": pytest.approx(0.75),
        "support": 4,
        "auc": pytest.approx(roc_auc_score(y == 0, probs[:, 0])),
    }
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["support"] == 0
    assert m["confusion_matrix"] == [[3, 1, 0], [1, 2, 1], [0, 0, 0]]
    assert m["one_off"] == pytest.approx(1.0)
    assert m["class_names"] == ["a", "b", "c"]


def test_auc_with_a_missing_class_is_null_and_left_out_of_the_macro_mean():
    y, probs = _toy()
    aucs = one_vs_rest_auc(y, probs)
    assert aucs[2] is None
    assert aucs[0] == pytest.approx(roc_auc_score(y == 0, probs[:, 0]))
    assert aucs[1] == pytest.approx(roc_auc_score(y == 1, probs[:, 1]))
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["per_class"]["c"]["auc"] is None
    assert m["auc_excluded"] == ["c"]
    assert m["macro_auc"] == pytest.approx((aucs[0] + aucs[1]) / 2)


def test_auc_hand_computed():
    # Positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of the 4 pairs are ordered right.
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    probs = np.stack([1 - p1, p1], axis=1)
    assert one_vs_rest_auc(y, probs) == pytest.approx([0.75, 0.75])


def test_unseen_class_has_null_per_class_values():
    y = np.array([0, 1, 0])
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["per_class"]["c"] == {"precision": None, "recall": None, "f1": None, "support": 0, "auc": None}
    assert m["macro_f1"] == pytest.approx(1.0)  # the unseen class does not drag the mean down


def test_reliability_and_ece_hand_computed():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.65, 0.35], [0.3, 0.7]])
    bins = reliability_bins(y, probs, n_bins=10)
    # Confidences 0.95 (right), 0.85 (right), 0.65 (wrong), 0.7 (right): bins 9, 8, 6, 6.
    assert bins["count"] == [0, 0, 0, 0, 0, 0, 2, 0, 1, 1]
    assert bins["accuracy"][6] == pytest.approx(0.5)
    assert bins["confidence"][6] == pytest.approx(0.675)
    assert bins["accuracy"][0] is None
    ece = expected_calibration_error(y, probs, n_bins=10)
    assert ece == pytest.approx(2 / 4 * 0.175 + 1 / 4 * 0.15 + 1 / 4 * 0.05)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"expected \(3, 2\)"):
        classification_metrics(np.array([0, 1, 0]), np.ones((3, 3)) / 3, ["a", "b"])
    with pytest.raises(ValueError, match="must lie in"):
        classification_metrics(np.array([0, 2]), np.ones((2, 2)) / 2, ["a", "b"])


def _preds() -> Predictions:
    ages = np.array([3, 8, 23, 27, 40, 44, 67, 70])
    pred = np.array([4.0, 12.0, 23.0, 33.0, 41.0, 50.0, 60.0, 80.0])
    age_probs = np.zeros((8, 101))
    age_probs[np.arange(8), np.round(pred).astype(int)] = 1.0
    from deepage.labels import get_scheme

    class_probs = {s: age_probs @ get_scheme(s).age_to_class_matrix() for s in ("utk14", "utk8")}
    return Predictions(age_true=ages, age_pred=pred, class_probs=class_probs, index=np.arange(8))


def test_prediction_metrics_consistent_with_core_metrics():
    preds = _preds()
    full, core = prediction_metrics(preds), core_metrics(preds)
    assert full["n"] == core["n"] == 8
    for s in ("utk14", "utk8"):
        assert full[s]["accuracy"] == pytest.approx(core[s]["accuracy"])
        assert full[s]["one_off"] == pytest.approx(core[s]["one_off"])
        assert len(full[s]["class_names"]) == len(full[s]["confusion_matrix"])
    assert full["age"]["mae"] == pytest.approx(np.mean([1, 4, 0, 6, 1, 6, 7, 10]))
    assert full["age"]["cs5"] == pytest.approx(4 / 8)
    # utk14 classes: 3->0 (pred 4->0 ok), 8->1 (12->2), 23->4 (ok), 27->5 (33->6), 40->7 (41->8),
    # 44->8 (50->9), 67->13 (60->11), 70->13 (80->13 ok): 3 of 8 right.
    assert full["utk14"]["accuracy"] == pytest.approx(3 / 8)


def test_by_group_splitting():
    preds = _preds()
    gender = np.array([0, 1, 0, 1, 0, 1, 0, -1])
    race = np.array([0, 0, 1, 1, 2, 3, 4, 4])
    m = full_metrics(preds, gender=gender, race=race)
    assert list(m["by_gender"]) == ["male", "female", "unknown"]
    assert [m["by_gender"][g]["n"] for g in ("male", "female", "unknown")] == [4, 3, 1]
    assert list(m["by_race"]) == ["White", "Black", "Asian", "Indian", "Others"]
    male = np.flatnonzero(gender == 0)
    assert m["by_gender"]["male"]["age"]["mae"] == pytest.approx(
        mae(preds.age_true[male], preds.age_pred[male])
    )
    # A one-image group still gets metrics; its AUCs have no curve.
    assert m["by_gender"]["unknown"]["utk14"]["accuracy"] == pytest.approx(1.0)
    assert m["by_gender"]["unknown"]["utk14"]["macro_auc"] is None
    # The groups partition the set.
    assert sum(g["n"] for g in m["by_race"].values()) == m["n"]
    json.dumps(m, allow_nan=False)  # JSON-safe: no NaN anywhere
    with pytest.raises(ValueError, match="by_gender: 3 group codes for 8"):
        full_metrics(preds, gender=gender[:3])


def test_json_safe_turns_nan_into_null():
    out = json_safe(
        {"a": float("nan"), "b": np.float32(0.5), "c": [np.int64(3), np.inf], "d": np.bool_(True)}
    )
    assert out == {"a": None, "b": 0.5, "c": [3, None], "d": True}
    assert json.dumps(out, allow_nan=False)


def test_paired_bootstrap_measures_the_paired_difference():
    rng = np.random.default_rng(0)
    a = rng.exponential(4.5, size=2000)  # per-image absolute errors of model A
    b = a - 0.1 + rng.normal(0, 0.5, size=2000)  # B: 0.1 years better, strongly paired with A
    result = paired_bootstrap(a, b, n_boot=500)
    assert result["difference"] == pytest.approx(float(np.mean(b - a)))
    assert 0.005 < result["se"] < 0.02  # ~0.5 / sqrt(2000), far below either model's own spread (~0.1)
    lo, hi = result["ci95"]
    assert lo < result["difference"] < hi < 0
    unpaired = paired_bootstrap(a, rng.permutation(b), n_boot=500)
    assert unpaired["se"] > 5 * result["se"]
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap(a, b[:10])
