"""Old-photo degradations: each operation does what its name says, deterministically; the training
augmentation touches its share of a batch; ``deepage evaluate --degrade`` scores a split under each."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deepage.checkpoint import load_checkpoint, save_checkpoint
from deepage.cli import main as cli
from deepage.config import TrainConfig
from deepage.degradations import DEGRADATIONS, PhotoAugmentation, degrade, parse_degradations, photo_augment
from deepage.evaluation.robustness import evaluate_degraded
from deepage.training.engine import train


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Four 64 px colour images with detail (gradients and a checkerboard)."""
    yy, xx = np.mgrid[0:64, 0:64]
    board = ((yy // 4 + xx // 4) % 2) * 120
    images = []
    for k in range(4):
        rgb = np.stack([board + 60 + 10 * k, xx * 2 + 20, yy * 3], axis=-1)
        images.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.stack(images)


def test_parse_names_strengths_and_errors():
    assert parse_degradations("noise, blur=1.5,jpeg=30") == [("noise", 12.0), ("blur", 1.5), ("jpeg", 30.0)]
    with pytest.raises(ValueError, match="unknown degradation 'fog'"):
        parse_degradations("noise,fog")
    with pytest.raises(ValueError, match="'blur=x': the strength must be a number"):
        parse_degradations("blur=x")
    with pytest.raises(ValueError, match="positive"):
        parse_degradations("jpeg=0")
    with pytest.raises(ValueError, match="at least one"):
        parse_degradations(" , ")


def test_each_degradation_does_what_its_name_says(faces):
    def hf(a: np.ndarray) -> float:  # high-frequency energy: mean absolute horizontal difference
        return float(np.abs(np.diff(a.astype(np.float32), axis=2)).mean())

    grey = degrade(faces, "grey", 1)
    assert grey.dtype == np.uint8 and grey.shape == faces.shape
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    sepia = degrade(faces, "sepia", 1).astype(int)
    assert (sepia[..., 0] >= sepia[..., 1]).all() and (sepia[..., 1] >= sepia[..., 2]).all()
    noisy = degrade(faces, "noise", 10, seed=1).astype(float) - faces
    assert 8 < noisy.std() < 11 and abs(noisy.mean()) < 0.5
    assert hf(degrade(faces, "blur", 2)) < 0.5 * hf(faces)
    assert hf(degrade(faces, "down", 16)) < 0.6 * hf(faces)
    assert np.abs(degrade(faces, "jpeg", 10).astype(int) - faces).mean() > 2
    assert np.abs(degrade(faces, "jpeg", 95).astype(int) - faces).mean() < np.abs(
        degrade(faces, "jpeg", 10).astype(int) - faces).mean()
    cast = degrade(faces, "cast", 0.2, seed=3).reshape(-1, 3).mean(0) / faces.reshape(-1, 3).mean(0)
    assert (np.abs(cast - 1) <= 0.21).all() and np.abs(cast - 1).max() > 0.01
    for name in DEGRADATIONS:  # deterministic for a seed
        assert np.array_equal(degrade(faces, name, DEGRADATIONS[name][1], seed=5),
                              degrade(torch.from_numpy(faces), name, DEGRADATIONS[name][1], seed=5))


def test_photo_augment_touches_its_share_and_repeats_for_a_seed(faces):
    batch = torch.from_numpy(np.repeat(faces, 64, axis=0))  # (256, 64, 64, 3)
    only_grey = PhotoAugmentation(**{name: (0.0, (1.0, 1.0)) for name in DEGRADATIONS}
                                  | {"grey": (0.25, (1.0, 1.0))})
    out = photo_augment(batch, only_grey, torch.Generator().manual_seed(0))
    greyed = (out[..., 0] == out[..., 2]).all(dim=(1, 2)) & (out[..., 0] == out[..., 1]).all(dim=(1, 2))
    assert 0.15 < greyed.float().mean() < 0.35
    assert torch.equal(out[~greyed], batch[~greyed])  # the others are untouched
    again = photo_augment(batch, only_grey, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert not torch.equal(out, photo_augment(batch, only_grey, torch.Generator().manual_seed(1)))
    mixed = photo_augment(batch, PhotoAugmentation(), torch.Generator().manual_seed(0))
    assert mixed.shape == batch.shape and mixed.dtype == torch.uint8


def test_training_with_photo_augment(tiny_h5, tmp_path):
    config = TrainConfig(data=str(tiny_h5), model="mobilenet_v2_tiny", head="dex", input_size=32, epochs=1,
                         batch_size=16, out_dir=str(tmp_path), name="photo", progress=False, num_threads=1,
                         photo_augment=True)
    result = train(config)
    assert result.steps > 0 and (result.run_dir / "best.pt").is_file()


def test_evaluate_degrade_scores_each_condition(tiny_checkpoint, tiny_h5, tmp_path, capsys):
    # answering by the mean: the barely trained tiny model's whole-year medians hardly move under noise
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["spec"]["head_kwargs"] = {**ckpt["spec"]["head_kwargs"], "estimate": "mean"}
    by_mean = tmp_path / "by_mean.pt"
    save_checkpoint(by_mean, ckpt)
    report = evaluate_degraded(by_mean, tiny_h5, split="val", degradations="grey,noise=30",
                               out_dir=tmp_path)
    assert list(report["conditions"]) == ["clean", "grey=1", "noise=30"]
    clean = report["conditions"]["clean"]
    assert clean["mae"] >= 0 and 0 <= clean["cs5"] <= 1
    assert sum(b["n"] for b in clean["signed_error_by_age"].values()) == report["n"]
    assert report["conditions"]["noise=30"]["mae"] != clean["mae"]
    assert "| noise=30 |" in (tmp_path / "degraded.md").read_text()
    out = tmp_path / "cli"
    assert cli(["evaluate", str(tiny_checkpoint), "--data", str(tiny_h5), "--split", "val", "--out", str(out),
                "--degrade", "blur=1"]) == 0
    saved = json.loads((out / "degraded.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert saved["conditions"]["clean"]["mae"] == pytest.approx(metrics["age"]["mae"], abs=1e-4)
    assert "blur=1: MAE" in capsys.readouterr().out
    assert cli(["evaluate", str(tiny_checkpoint), "--data", str(tiny_h5), "--degrade", "fog"]) == 2
