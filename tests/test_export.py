"""ONNX export: dynamic batch, spec in the metadata, same numbers as PyTorch, same ages via the Predictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepage.checkpoint import load_checkpoint, model_from_checkpoint
from deepage.inference import export as export_module
from deepage.inference.export import INPUT_NAME, OUTPUT_NAME, SPEC_KEY, export_onnx, onnx_session
from deepage.inference.predictor import Predictor

pytest.importorskip("onnxruntime")
ASTRONAUT = Path(__file__).resolve().parents[1] / "deepage" / "assets" / "astronaut.jpg"


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_torch(exported, tiny_checkpoint, batch):
    model = model_from_checkpoint(tiny_checkpoint)
    n = model.spec.preprocessing.input_size
    x = torch.randn(batch, 3, n, n, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = model(x).numpy()
    got = onnx_session(exported).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    assert got.shape == expected.shape == (batch, 101)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_spec_travels_in_the_metadata(exported, tiny_checkpoint):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert json.loads(props[SPEC_KEY]) == load_checkpoint(tiny_checkpoint)["spec"]
    assert props["deepage_checkpoint"] == "best.pt"


def test_predictor_backends_agree(exported, tiny_checkpoint):
    by_torch = Predictor.from_checkpoint(tiny_checkpoint).predict_one(ASTRONAUT).faces[0]
    for source in (exported, tiny_checkpoint):  # an .onnx file, or a checkpoint exported in memory
        p = Predictor.from_checkpoint(source, backend="onnx")
        assert p.backend == "onnx" and p.spec.name == "mobilenet_v2_tiny"
        face = p.predict_one(ASTRONAUT).faces[0]
        assert face.box == by_torch.box
        assert face.age == pytest.approx(by_torch.age, abs=1e-3)
        assert face.age_low == pytest.approx(by_torch.age_low, abs=1e-2)
        assert face.groups["utk8"].label == by_torch.groups["utk8"].label


def test_a_mismatch_is_refused_and_nothing_written(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "_max_difference", lambda *a, **k: 0.5)
    out = tmp_path / "bad.onnx"
    with pytest.raises(RuntimeError, match="does not match PyTorch"):
        export_onnx(tiny_checkpoint, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_onnx_without_spec_is_refused(tmp_path, tiny_checkpoint):
    import onnx

    proto = onnx.load(str(export_onnx(tiny_checkpoint, tmp_path / "a.onnx")))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="no 'deepage_spec' metadata"):
        Predictor.from_checkpoint(tmp_path / "plain.onnx", backend="onnx")
