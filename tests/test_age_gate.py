"""The minor/adult check: P(age >= A) from the age distribution, the decision, the thresholds chosen on
validation data, stored with the model, and what predict and evaluate show of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deepage.answers import DECISIONS, AgeGate, choose_age_gate, decide, p_at_least
from deepage.checkpoint import AGE_GATES_KEY, load_checkpoint, read_age_gates, save_checkpoint
from deepage.cli import main
from deepage.evaluation.metrics import age_bands, age_gate_metrics, age_gate_rates

ASTRONAUT = Path(__file__).resolve().parents[1] / "deepage" / "assets" / "astronaut.jpg"


def _distribution(**mass: float) -> np.ndarray:
    p = np.zeros(101)
    for age, m in mass.items():
        p[int(age.lstrip("a"))] = m
    return p


# ---- P(age >= A) and the decision: exact values ----------------------------------------------------------
def test_p_at_least_sums_the_bins_from_the_adult_age_up():
    p = _distribution(a10=0.25, a17=0.25, a18=0.125, a40=0.375)
    assert float(p_at_least(p, 18)) == 0.5  # 18 and 40
    assert float(p_at_least(p, 17)) == 0.75  # a face aged 17 is under 18, but at least 17
    assert float(p_at_least(p, 19)) == 0.375
    assert float(p_at_least(p, 41)) == 0.0
    assert float(p_at_least(p, 1)) == 1.0
    last = _distribution(a100=1.0)  # the last bin: 100 and over
    np.testing.assert_array_equal(p_at_least(np.stack([p, last, p / 2]), 18), [0.5, 1.0, 0.5])  # normalised
    with pytest.raises(ValueError, match="from 1 to 100"):
        p_at_least(p, 0)
    with pytest.raises(ValueError, match="from 1 to 100"):
        p_at_least(p, 101)


def test_decision_is_strict_at_both_thresholds():
    p = np.array([0.95, 0.9, 0.5, 0.2, 0.1999, 0.0])
    assert decide(p, adult_threshold=0.9, minor_threshold=0.2).tolist() == [
        "adult", "unsure", "unsure", "unsure", "minor", "minor"]
    gate = AgeGate(adult_age=18, adult_threshold=0.5, minor_threshold=0.5, max_minors_passed=0.01,
                   max_adults_held=0.05, minors_passed=0, adults_held=0, unsure=0, n_minors=1, n_adults=1)
    assert gate.decide(p).tolist() == ["adult", "adult", "unsure", "minor", "minor", "minor"]
    assert AgeGate.from_dict({**gate.to_dict(), "from_a_later_version": 1}) == gate
    with pytest.raises(ValueError, match="above the adult threshold"):
        decide(p, adult_threshold=0.2, minor_threshold=0.9)


# ---- choosing the thresholds -----------------------------------------------------------------------------
@pytest.mark.parametrize("adult_age", [13, 16, 18, 21, 25])
@pytest.mark.parametrize("rates", [(0.01, 0.05), (0.05, 0.01), (0.0, 0.1)])
def test_thresholds_meet_the_stated_rates_on_the_data_they_were_chosen_on(adult_age, rates):
    rng = np.random.default_rng(adult_age)
    ages = rng.integers(0, 80, 3000)
    noisy = (ages - adult_age + rng.normal(0, 6, len(ages))) / 4
    p = np.round(1 / (1 + np.exp(-noisy)), 3)  # rounded: many ties
    max_passed, max_held = rates
    gate = choose_age_gate(ages, p, adult_age, max_minors_passed=max_passed, max_adults_held=max_held)
    minor = ages < adult_age
    decision = gate.decide(p)
    passed, held = np.mean(decision[minor] == "adult"), np.mean(decision[~minor] == "minor")
    assert passed <= max_passed and held <= max_held
    assert (gate.minors_passed, gate.adults_held) == (passed, held)
    assert gate.unsure == np.mean(decision == "unsure") and not gate.crossed
    assert (gate.n_minors, gate.n_adults) == (minor.sum(), (~minor).sum())
    # the tightest: any lower adult threshold (the next minor score below) passes too many minors
    lower = p[minor][p[minor] < gate.adult_threshold]
    if lower.size:
        assert np.mean(p[minor] > lower.max()) > max_passed
    higher = p[~minor][p[~minor] > gate.minor_threshold]
    if higher.size:
        assert np.mean(p[~minor] < higher.min()) > max_held


def test_thresholds_by_hand():
    ages = np.array([5, 10, 15, 17, 20, 30, 40, 50, 60, 70])
    p = np.array([0.1, 0.3, 0.6, 0.8, 0.4, 0.7, 0.9, 0.95, 0.97, 0.99])
    # no minor may pass: above the highest minor score (0.8); 10 % of 6 adults is 0 adults held: below the lowest (0.4)
    gate = choose_age_gate(ages, p, 18, max_minors_passed=0.0, max_adults_held=0.1)
    assert (gate.adult_threshold, gate.minor_threshold) == (0.8, 0.4)
    assert gate.decide(p).tolist() == ["minor", "minor", "unsure", "unsure", "unsure", "unsure", "adult",
                                       "adult", "adult", "adult"]
    # 25 % of 4 minors: one may pass (0.8 does); 1/6 of the adults: one may be held (0.4 is)
    gate = choose_age_gate(ages, p, 18, max_minors_passed=0.25, max_adults_held=1 / 6)
    # the minors' 2nd highest (0.6) is below the adults' 2nd lowest (0.7): they cross, one threshold between
    assert gate.crossed and gate.adult_threshold == gate.minor_threshold == pytest.approx(0.65)
    assert (gate.minors_passed, gate.adults_held, gate.unsure) == (0.25, 1 / 6, 0.0)


def test_thresholds_need_minors_and_adults():
    with pytest.raises(ValueError, match="0 under 18 and 3 aged 18 or more"):
        choose_age_gate(np.array([20, 30, 40]), np.array([0.5, 0.6, 0.7]), 18)
    with pytest.raises(ValueError, match="share in"):
        choose_age_gate(np.array([5, 30]), np.array([0.1, 0.9]), 18, max_minors_passed=1.0)


def test_rates_by_group_and_age_band():
    ages = np.array([12, 15, 16, 17, 18, 19, 30, 40])
    decision = np.array(["minor", "adult", "unsure", "minor", "minor", "adult", "adult", "unsure"])
    r = age_gate_rates(ages, decision, 18)
    assert (r["n_minors"], r["n_adults"]) == (4, 4)
    assert (r["minors_passed_as_adults"], r["adults_held_as_minors"], r["unsure"]) == (0.25, 0.25, 0.25)
    assert age_bands(18)[:2] == [("0-12", 0, 13), ("13-17", 13, 18)] and age_bands(16)[1] == ("13-15", 13, 16)
    p = np.array([0.1, 0.95, 0.5, 0.1, 0.1, 0.95, 0.95, 0.5])
    gate = AgeGate(adult_age=18, adult_threshold=0.9, minor_threshold=0.2, max_minors_passed=0.01,
                   max_adults_held=0.05, minors_passed=0, adults_held=0, unsure=0, n_minors=1, n_adults=1)
    m = age_gate_metrics(ages, p, gate, gender=np.array([0, 0, 0, 0, 1, 1, 1, 1]), race=np.zeros(8, int))
    assert m["minors_passed_as_adults"] == 0.25 and m["unsure"] == 0.25
    assert m["by_gender"]["male"]["minors_passed_as_adults"] == 0.25
    assert m["by_gender"]["male"]["adults_held_as_minors"] is None  # no adults among them
    assert m["by_age_band"]["13-17"] == age_gate_rates(ages[1:4], decision[1:4], 18)
    assert m["by_age_band"]["13-17"]["decided_adult"] == pytest.approx(1 / 3)
    assert set(m["by_age_band"]) == {"0-12", "13-17", "18-20", "26-35", "36-55"}
    assert 0 <= m["minor_roc_auc"] <= 1 and m["operating_point"]["adult_threshold"] == 0.9


# ---- stored with the model; predict and evaluate ---------------------------------------------------------
# The tiny data's validation split holds ages 24-75 only (look-alike synthetic faces of near ages are
# duplicate groups, kept in one split), so the check is chosen there for adult age 30, and on all images
# (training ones included: warned) for 18.
@pytest.fixture(scope="module")
def calibrated(tiny_checkpoint, tiny_h5, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gate") / "best.pt"
    shutil.copy(tiny_checkpoint, path)
    assert main(["calibrate", str(path), "--data", str(tiny_h5), "--split", "val", "--adult-age", "30",
                 "--max-minors-passed", "0.25", "--max-adults-held", "0.1"]) == 0
    assert main(["calibrate", str(path), "--data", str(tiny_h5), "--split", "all", "--adult-age", "18"]) == 0
    return path


def test_calibrate_writes_the_operating_point_into_the_checkpoint(calibrated, tiny_checkpoint, tiny_h5, capsys):
    ckpt = load_checkpoint(calibrated)
    before = load_checkpoint(tiny_checkpoint)
    assert set(ckpt) == set(before) | {AGE_GATES_KEY}  # nothing else changed
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in before["state_dict"].items())
    gates = read_age_gates(ckpt, calibrated)
    assert sorted(gates) == [18, 30]
    gate = gates[30]
    assert gate.adult_age == 30 and gate.split == "val" and gate.data == tiny_h5.name
    assert gate.data_fingerprint == gate.checkpoint_fingerprint == before["split_fingerprint"]
    assert gate.minors_passed <= 0.25 and gate.adults_held <= 0.1 and gate.n_minors >= 2
    assert gates[18].split == "all" and gates[18].max_minors_passed == 0.01
    # the summary, with the warning about training images, and -o leaves the input alone
    assert main(["calibrate", str(calibrated), "--data", str(tiny_h5), "--split", "train", "--adult-age", "21",
                 "-o", str(calibrated.with_name("three.pt"))]) == 0
    out = capsys.readouterr().out
    assert "adult age 21, chosen on split 'train'" in out and "holds the images the model was trained on" in out
    assert sorted(read_age_gates(load_checkpoint(calibrated.with_name("three.pt")))) == [18, 21, 30]
    assert sorted(read_age_gates(load_checkpoint(calibrated))) == [18, 30]
    # other weights (retrained, edited): the stored points no longer apply
    ckpt["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    save_checkpoint(calibrated.with_name("edited.pt"), ckpt)
    assert read_age_gates(load_checkpoint(calibrated.with_name("edited.pt"))) == {}


def test_predict_gives_p_adult_and_decision(calibrated, tmp_path, capsys):
    gate = read_age_gates(load_checkpoint(calibrated))[30]
    assert main(["predict", str(ASTRONAUT), "--model", str(calibrated), "--format", "json", "--adult-age",
                 "30"]) == 0
    (face,) = json.loads(capsys.readouterr().out)["faces"]
    assert face["adult_age"] == 30 and 0 <= face["p_adult"] <= 1 and face["decision"] in DECISIONS
    near_a_threshold = min(abs(face["p_adult"] - t) for t in (gate.adult_threshold, gate.minor_threshold)) < 1e-4
    assert face["decision"] == gate.decide(np.array([face["p_adult"]]))[0] or near_a_threshold
    # the default (auto) uses the stored point for 18; csv and table show it
    assert main(["predict", str(ASTRONAUT), "--model", str(calibrated), "--format", "csv"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    fields = dict(zip(header.split(","), row.split(","), strict=True))
    assert fields["adult_age"] == "18" and fields["decision"] in DECISIONS and 0 <= float(fields["p_adult"]) <= 1
    assert main(["predict", str(ASTRONAUT), "--model", str(calibrated)]) == 0
    assert f"{fields['decision']} (P(age>=18) " in capsys.readouterr().out
    assert main(["predict", str(ASTRONAUT), "--model", str(calibrated), "--adult-age", "off", "--format",
                 "json"]) == 0
    (face,) = json.loads(capsys.readouterr().out)["faces"]
    assert (face["adult_age"], face["p_adult"], face["decision"]) == (None, None, None)


def test_predict_without_an_operating_point_refuses_in_one_line(calibrated, tiny_checkpoint, capsys):
    assert main(["predict", str(ASTRONAUT), "--model", str(calibrated), "--adult-age", "21"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no operating point for adult age 21 (stored: 18, 30)" in err
    assert "deepage calibrate" in err and "--adult-age 21" in err
    assert main(["predict", str(ASTRONAUT), "--model", str(tiny_checkpoint), "--format", "json"]) == 0
    (face,) = json.loads(capsys.readouterr().out)["faces"]  # auto and none stored: no check, no error
    assert face["decision"] is None


def test_evaluate_reports_the_rates(calibrated, tiny_h5, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(calibrated), "--data", str(tiny_h5), "--split", "val", "--out", str(out),
                 "--adult-age", "30"]) == 0
    assert "adult age 30: minors passed as adults" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("minors_passed_as_adults", "adults_held_as_minors", "unsure"):
        assert metrics[key] == metrics["age_gate"][key]
    # on its own calibration split the rates hold by construction (and it says so)
    assert metrics["minors_passed_as_adults"] <= 0.25 and metrics["adults_held_as_minors"] <= 0.1
    assert any("by construction" in w for w in metrics["warnings"])
    assert (out / "minor_30.png").stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "## Minor or adult (adult age 30)" in report and "By race:" in report and "By true age" in report
    assert main(["evaluate", str(calibrated), "--data", str(tiny_h5), "--split", "all", "--out",
                 str(tmp_path / "all"), "--adult-age", "18"]) == 0
    gate = json.loads((tmp_path / "all" / "metrics.json").read_text())["age_gate"]
    assert set(gate["by_gender"]) == {"male", "female"} and gate["by_age_band"]["13-17"]["n"] >= 1
    assert 0 <= gate["minor_roc_auc"] <= 1 and 0 <= gate["minor_average_precision"] <= 1
    assert main(["evaluate", str(calibrated), "--data", str(tiny_h5), "--adult-age", "25"]) == 2
    assert "deepage calibrate" in capsys.readouterr().err


def test_onnx_export_carries_the_operating_points(calibrated, tmp_path):
    pytest.importorskip("onnxruntime")
    from deepage.inference.export import export_onnx
    from deepage.inference.predictor import Predictor

    onnx = export_onnx(calibrated, tmp_path / "m.onnx")
    from_onnx = Predictor.from_checkpoint(onnx, detect=False)
    assert from_onnx.age_gates == read_age_gates(load_checkpoint(calibrated))
    assert from_onnx.age_gate.adult_age == 18 and from_onnx.describe()["adult_age"] == 18
    face = from_onnx.predict_one(ASTRONAUT).faces[0]
    assert face.decision in DECISIONS and face.p_adult == pytest.approx(
        float(p_at_least(face.age_probs, 18)))
