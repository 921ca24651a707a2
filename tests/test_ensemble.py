"""An ensemble of DEX models as one checkpoint: averaged distributions, each member on its own input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepage.checkpoint import model_from_checkpoint, save_checkpoint
from deepage.data.loader import load_split
from deepage.models import create_model
from deepage.models.ensemble import ENSEMBLE, build_ensemble_checkpoint, unpack_ensemble_checkpoint
from deepage.models.heads import point_age
from deepage.preprocessing import prepare_batch


def _member(path, seed: int, fingerprint: str = "f00d", head: str = "dex", **pre) -> tuple:
    torch.manual_seed(seed)
    kw = {"num_classes": 14} if head == "classes" else {}
    model = create_model("cnn", head=head, stored_size=32, **pre, **kw).eval()
    save_checkpoint(path, {"spec": model.spec.to_dict(), "state_dict": model.state_dict(),
                           "split_fingerprint": fingerprint, "metrics": {"age": {"mae": 9.0 + seed}}})
    return path, model


@pytest.fixture()
def members(tmp_path):
    wide = _member(tmp_path / "wide.pt", 0, input_size=32, crop_pct=1.0, normalization="unit")
    # a tighter crop (the central 24 px of the first member's 32) in another normalisation: its input is a slice
    # of the first one's, renormalised, with no resampling, so the ensemble must give exactly its answer
    tight = _member(tmp_path / "tight.pt", 1, input_size=24, crop_pct=0.75, normalization="imagenet")
    return wide, tight


def test_the_ensemble_averages_each_members_own_distribution(members, tmp_path):
    (wide_path, wide), (tight_path, tight) = members
    build_ensemble_checkpoint([wide_path, tight_path], tmp_path / "ens.pt", weights="float32")
    ensemble = model_from_checkpoint(tmp_path / "ens.pt")
    assert ensemble.spec.name == ENSEMBLE and ensemble.spec.preprocessing == wide.spec.preprocessing
    stored = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        p_wide = wide(prepare_batch(stored, wide.spec.preprocessing)).softmax(1)
        p_tight = tight(prepare_batch(stored, tight.spec.preprocessing)).softmax(1)
        out = ensemble(prepare_batch(stored, ensemble.spec.preprocessing))
    torch.testing.assert_close(out.exp(), (p_wide + p_tight) / 2, atol=1e-5, rtol=1e-4)
    answer = ensemble.predict(out)
    torch.testing.assert_close(answer.age, point_age((p_wide + p_tight) / 2), atol=1e-3, rtol=1e-4)
    assert set(answer.class_probs) == {"utk14", "utk8"}


def test_half_storage_scoring_and_onnx(members, tmp_path, tiny_h5):
    (wide_path, _), (tight_path, _) = members
    payload = build_ensemble_checkpoint([wide_path, tight_path], tmp_path / "ens16.pt", data=tiny_h5)
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())
    assert payload["metrics"]["n"] == len(load_split(tiny_h5, "val")) and payload["metrics_split"] == "val"
    assert [m["metrics"]["age"]["mae"] for m in payload["members"]] == [9.0, 10.0]
    model = model_from_checkpoint(tmp_path / "ens16.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(payload["metrics"]["age"]["mae"])

    pytest.importorskip("onnxruntime")
    from deepage.inference.export import check_onnx, model_to_onnx_bytes

    check_onnx(model, model_to_onnx_bytes(model), "ensemble")  # raises if ONNX Runtime answers otherwise


def test_members_that_cannot_be_joined_are_refused(members, tmp_path):
    (wide_path, _), (tight_path, _) = members
    other = _member(tmp_path / "other.pt", 2, fingerprint="beef", input_size=32, crop_pct=1.0)[0]
    with pytest.raises(ValueError, match="different splits"):
        build_ensemble_checkpoint([wide_path, other], tmp_path / "x.pt")
    with pytest.raises(ValueError, match="widest crop first"):
        build_ensemble_checkpoint([tight_path, wide_path], tmp_path / "x.pt")
    classes = _member(tmp_path / "classes.pt", 3, head="classes", input_size=32, crop_pct=1.0)[0]
    with pytest.raises(ValueError, match="'dex' head"):
        build_ensemble_checkpoint([wide_path, classes], tmp_path / "x.pt")
    with pytest.raises(ValueError, match="at least two members"):
        build_ensemble_checkpoint([wide_path], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_the_cli_writes_and_scores_an_ensemble(members, tmp_path, tiny_h5, capsys):
    from deepage.cli import main

    (wide_path, _), (tight_path, _) = members
    out = tmp_path / "cli.pt"
    assert main(["ensemble", str(wide_path), str(tight_path), "-o", str(out), "--data", str(tiny_h5)]) == 0
    text = capsys.readouterr().out
    assert "an ensemble of 2 models" in text and '"mae"' in text
    assert np.isfinite(torch.load(out, weights_only=True)["metrics"]["age"]["mae"])


def test_unpacked_members_answer_as_they_did(members, tmp_path):
    (wide_path, wide), (tight_path, tight) = members
    build_ensemble_checkpoint([wide_path, tight_path], tmp_path / "ens.pt")  # float16 storage
    paths = unpack_ensemble_checkpoint(tmp_path / "ens.pt", tmp_path / "out")
    assert [p.name for p in paths] == ["member0.pt", "member1.pt"]
    stored = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    for path, original, seed in zip(paths, (wide, tight), (0, 1), strict=True):
        member = model_from_checkpoint(path)
        assert member.spec == original.spec
        assert all(p.dtype == torch.float32 for p in member.parameters())
        with torch.no_grad():
            x = prepare_batch(stored, original.spec.preprocessing)
            torch.testing.assert_close(member(x).softmax(1), original(x).softmax(1), atol=2e-3, rtol=0)
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["split_fingerprint"] == "f00d" and ckpt["metrics"]["age"]["mae"] == 9.0 + seed
    with pytest.raises(ValueError, match="not an ensemble"):
        unpack_ensemble_checkpoint(wide_path, tmp_path / "again")


def test_the_ensemble_answers_by_its_estimate(members, tmp_path):
    (wide_path, _), (tight_path, _) = members
    build_ensemble_checkpoint([wide_path, tight_path], tmp_path / "ens.pt", weights="float32")
    ensemble = model_from_checkpoint(tmp_path / "ens.pt")
    assert ensemble.head.estimate == "median"
    ckpt = torch.load(tmp_path / "ens.pt", weights_only=True)
    ckpt["spec"]["head_kwargs"] = {"estimate": "mean"}
    by_mean = model_from_checkpoint(ckpt)
    logits = torch.randn(3, 101, generator=torch.Generator().manual_seed(4))
    probs = logits.softmax(1)
    torch.testing.assert_close(by_mean.predict(logits).age, probs @ torch.arange(101.0))
    torch.testing.assert_close(ensemble.predict(logits).age, point_age(probs, "median"))


def test_antialias_resizes_members_inputs_with_antialiased_weights(tmp_path):
    """``antialias``: a member whose input is a downscale of the first's sees torch's antialiased resize
    (kept as a matrix, so the graph exports); without it, plain bilinear as before; the flag is in the spec."""
    from deepage.models.ensemble import MemberInput
    from deepage.preprocessing import Preprocessing

    outer = Preprocessing(input_size=40, stored_size=40, crop_pct=1.0, normalization="unit")
    inner = Preprocessing(input_size=24, stored_size=40, crop_pct=1.0, normalization="unit")
    x = torch.randn(2, 3, 40, 40)
    expected = torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False,
                                               antialias=True)
    torch.testing.assert_close(MemberInput(outer, inner, antialias=True)(x), expected, atol=1e-5, rtol=0)
    plain = torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(MemberInput(outer, inner)(x), plain)

    wide, _ = _member(tmp_path / "wide.pt", 0, input_size=32, crop_pct=1.0, normalization="unit")
    small, _ = _member(tmp_path / "small.pt", 1, input_size=20, crop_pct=1.0, normalization="unit")
    payload = build_ensemble_checkpoint([wide, small], tmp_path / "aa.pt", weights="float32", antialias=True)
    assert payload["spec"]["model_kwargs"]["antialias"] is True
    model = model_from_checkpoint(tmp_path / "aa.pt")
    assert model.inputs[1].resize_matrix is not None and model.inputs[0].resize_matrix is None

    pytest.importorskip("onnxruntime")
    from deepage.inference.export import check_onnx, model_to_onnx_bytes

    check_onnx(model, model_to_onnx_bytes(model), "ensemble")


def test_int8_weight_storage_loads_scores_and_rewrites_as_stored(members, tmp_path, tiny_h5):
    """``weights="int8"``: conv/linear weights on disk as int8 with a scale per output channel (each within half
    a step of the float weight), the rest float16; loaded as float32; the recorded metrics are the stored
    weights'; writing the loaded checkpoint again (as ``deepage calibrate`` does) keeps bytes and digest."""
    from deepage.checkpoint import INT8_SCALES_KEY, load_checkpoint, weights_digest
    from deepage.data.loader import FaceBatches
    from deepage.evaluation.metrics import core_metrics
    from deepage.evaluation.predictions import collect_predictions

    (wide_path, _), (tight_path, _) = members
    reference = build_ensemble_checkpoint([wide_path, tight_path], tmp_path / "f32.pt", weights="float32")
    payload = build_ensemble_checkpoint([wide_path, tight_path], tmp_path / "i8.pt", data=tiny_h5, weights="int8")
    raw = torch.load(tmp_path / "i8.pt", weights_only=True)
    scales = raw[INT8_SCALES_KEY]
    assert raw["weight_storage"] == "int8" and scales
    for name, value in raw["state_dict"].items():
        original = reference["state_dict"][name]
        if name in scales:
            assert value.dtype == torch.int8 and original.dim() >= 2
            step = scales[name].reshape(-1, *([1] * (original.dim() - 1)))
            assert (value.float() * step - original).abs().le(step / 2 + 1e-7).all(), name
        elif value.is_floating_point():
            assert value.dtype == torch.float16, name
    assert (tmp_path / "i8.pt").stat().st_size < 0.5 * (tmp_path / "f32.pt").stat().st_size

    model = model_from_checkpoint(tmp_path / "i8.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    batches = FaceBatches(load_split(tiny_h5, "val"), model.spec.preprocessing, 128)
    assert core_metrics(collect_predictions(model, batches))["age"] == payload["metrics"]["age"]
    stored = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x = prepare_batch(stored, model.spec.preprocessing)
        torch.testing.assert_close(model(x).exp(), model_from_checkpoint(tmp_path / "f32.pt")(x).exp(),
                                   atol=2e-2, rtol=0)

    ckpt = load_checkpoint(tmp_path / "i8.pt")
    save_checkpoint(tmp_path / "again.pt", {**ckpt, "age_gates": {}})
    again = load_checkpoint(tmp_path / "again.pt")
    assert weights_digest(again["state_dict"]) == weights_digest(ckpt["state_dict"])
    rewritten = torch.load(tmp_path / "again.pt", weights_only=True)
    assert all(torch.equal(rewritten["state_dict"][k], raw["state_dict"][k]) for k in raw["state_dict"])

    raw[INT8_SCALES_KEY][next(iter(scales))] = torch.ones(1)
    torch.save(raw, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"broken\.pt: int8 weight .* and its scale do not match"):
        load_checkpoint(tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="weight storage 'int4'"):
        build_ensemble_checkpoint([wide_path, tight_path], tmp_path / "x.pt", weights="int4")
