"""Temperature scaling of the age distribution: fitted on validation, stored in the spec, and every stored
minor/adult operating point chosen again on the tempered distributions."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from deepage.checkpoint import load_checkpoint, model_from_checkpoint, read_age_gates
from deepage.cli import main
from deepage.evaluation.calibrate import fit_temperature, interval_coverage, temper
from deepage.models.heads import DexHead


def _gaussians(centres: np.ndarray, sigma: float) -> np.ndarray:
    grid = np.arange(101)
    p = np.exp(-0.5 * ((grid[None] - centres[:, None]) / sigma) ** 2)
    return p / p.sum(axis=1, keepdims=True)


def test_temper_composes_with_the_heads_temperature():
    logits = torch.randn(5, 101, generator=torch.Generator().manual_seed(0)) * 3
    at_two = DexHead(8, temperature=2.0).predict(logits).age_probs.numpy()
    at_one = DexHead(8).predict(logits).age_probs.numpy()
    np.testing.assert_allclose(temper(at_one, 2.0), at_two, atol=1e-6)
    np.testing.assert_allclose(temper(at_one, 1.0), at_one, atol=1e-6)
    with pytest.raises(ValueError, match="temperature must be positive"):
        DexHead(8, temperature=0.0)


def test_fit_temperature_recovers_a_known_overdispersion():
    # true ages scatter around each centre with sigma 4; the model says sigma 6. Tempering a Gaussian by t
    # multiplies its variance by t, so the fit must land near t = (4/6)^2
    rng = np.random.default_rng(0)
    centres = rng.uniform(20, 70, 4000)
    ages = np.rint(centres + rng.normal(0, 4.0, len(centres)))
    wide = _gaussians(centres, 6.0)
    t = fit_temperature(ages, wide)
    assert t == pytest.approx((4.0 / 6.0) ** 2, rel=0.1)
    before, width_before = interval_coverage(ages, wide)
    after, width_after = interval_coverage(ages, temper(wide, t))
    assert before > 0.9 and abs(after - 0.8) < 0.03 and width_after < width_before
    # a model already right is left alone
    assert fit_temperature(ages, _gaussians(centres, 4.0)) == pytest.approx(1.0, abs=0.08)


def test_calibrate_temperature_writes_it_and_chooses_every_point_again(tiny_checkpoint, tiny_h5, tmp_path, capsys):
    path = tmp_path / "best.pt"
    shutil.copy(tiny_checkpoint, path)
    assert main(["calibrate", str(path), "--data", str(tiny_h5), "--split", "all", "--adult-age", "30",
                 "--max-minors-passed", "0.25"]) == 0
    first = read_age_gates(load_checkpoint(path))[30]
    capsys.readouterr()
    assert main(["calibrate", str(path), "--data", str(tiny_h5), "--split", "all", "--adult-age", "18",
                 "--temperature"]) == 0
    out = capsys.readouterr().out
    assert "temperature 1.0000 -> " in out and "chosen again on the tempered distributions" in out
    ckpt = load_checkpoint(path)
    t = ckpt["spec"]["head_kwargs"]["temperature"]
    assert t != 1.0 and ckpt["temperature_fit"]["after"] == t
    model = model_from_checkpoint(path)
    assert model.head.temperature == t
    gates = read_age_gates(ckpt, path)
    assert sorted(gates) == [18, 30]
    assert gates[30].max_minors_passed == 0.25  # its own target kept, its thresholds chosen afresh
    assert gates[30].minors_passed <= 0.25 and gates[30].adult_threshold != first.adult_threshold


def test_calibrate_temperature_on_an_onnx_graph(tiny_checkpoint, tiny_h5, tmp_path):
    from deepage.inference.export import onnx_model_and_record

    graph = tmp_path / "tiny.onnx"
    assert main(["export", str(tiny_checkpoint), "-o", str(graph)]) == 0
    assert main(["calibrate", str(graph), "--data", str(tiny_h5), "--split", "all", "--adult-age", "30",
                 "--temperature"]) == 0
    model, record = onnx_model_and_record(graph)
    t = record["spec"]["head_kwargs"]["temperature"]
    assert t != 1.0 and model.head.temperature == t and sorted(read_age_gates(record, graph)) == [30]
