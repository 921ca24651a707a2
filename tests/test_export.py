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


def test_a_checked_graph_is_cached_and_a_broken_cache_entry_is_rebuilt(tiny_checkpoint, tmp_path, monkeypatch):
    """A second process loading the same checkpoint reads the checked graph from the cache (no export); a
    truncated cache file is exported again, and an unwritable cache folder only costs the cache."""
    from deepage.checkpoint import model_from_checkpoint
    from deepage.inference import export

    monkeypatch.setenv("DEEPAGE_CACHE_DIR", str(tmp_path / "cache"))
    model = model_from_checkpoint(tiny_checkpoint)
    first = export.checked_onnx_bytes(model, tiny_checkpoint)
    (entry,) = (tmp_path / "cache").glob("*.onnx")
    assert entry.read_bytes() == first

    def no_export(*a, **k):
        raise AssertionError("exported again although the cache holds the graph")

    monkeypatch.setattr(export, "model_to_onnx_bytes", no_export)
    assert export.checked_onnx_bytes(model, tiny_checkpoint) == first
    monkeypatch.undo()

    monkeypatch.setenv("DEEPAGE_CACHE_DIR", str(tmp_path / "cache"))
    entry.write_bytes(first[: len(first) // 3])  # a file cut short
    assert export.checked_onnx_bytes(model, tiny_checkpoint) == first
    assert entry.read_bytes() == first

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("DEEPAGE_CACHE_DIR", str(blocker))
    assert export.checked_onnx_bytes(model, tiny_checkpoint) == first


@pytest.fixture(scope="module")
def int8_graph(tiny_checkpoint, tiny_h5, tmp_path_factory):
    from deepage.checkpoint import load_checkpoint
    from deepage.data.loader import sample_inputs
    from deepage.models.registry import ModelSpec

    pre = ModelSpec.from_dict(load_checkpoint(tiny_checkpoint)["spec"]).preprocessing
    calibration = sample_inputs(tiny_h5, pre, n=48)
    assert calibration.shape == (48, 3, pre.input_size, pre.input_size) and calibration.dtype == np.float32
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("int8") / "tiny.int8.onnx",
                       int8_calibration=calibration)


def test_an_int8_graph_carries_its_provenance_and_is_scored_as_it_answers(int8_graph, exported, tiny_checkpoint,
                                                                          tiny_h5, tmp_path):
    import onnx

    from deepage.checkpoint import load_checkpoint, weights_digest
    from deepage.evaluation.evaluate import evaluate_checkpoint
    from deepage.inference.export import FINGERPRINT_KEY, WEIGHTS_KEY

    proto = onnx.load(str(int8_graph))
    assert any(node.op_type == "QuantizeLinear" for node in proto.graph.node)
    meta = {p.key: p.value for p in proto.metadata_props}
    ckpt = load_checkpoint(tiny_checkpoint)
    assert meta[WEIGHTS_KEY] == weights_digest(ckpt["state_dict"])
    assert meta[FINGERPRINT_KEY] == ckpt["split_fingerprint"] and SPEC_KEY in meta
    by_int8 = evaluate_checkpoint(int8_graph, tiny_h5, split="val", out_dir=tmp_path / "i8", plots=False)
    by_float = evaluate_checkpoint(exported, tiny_h5, split="val", out_dir=tmp_path / "f32", plots=False)
    by_torch = evaluate_checkpoint(tiny_checkpoint, tiny_h5, split="val", out_dir=tmp_path / "pt", plots=False)
    assert by_int8.metrics["fingerprints"]["match"] and not by_int8.warnings
    assert by_float.metrics["age"]["mae"] == pytest.approx(by_torch.metrics["age"]["mae"], abs=1e-3)
    assert abs(by_int8.metrics["age"]["mae"] - by_float.metrics["age"]["mae"]) < 0.5


def test_int8_quantisation_that_moves_the_ages_is_refused(tiny_checkpoint, tiny_h5, monkeypatch):
    from deepage.checkpoint import model_from_checkpoint
    from deepage.data.loader import sample_inputs
    from deepage.inference import export

    model = model_from_checkpoint(tiny_checkpoint)
    calibration = sample_inputs(tiny_h5, model.spec.preprocessing, n=16)
    monkeypatch.setattr(export, "INT8_MAX_AGE_CHANGE", -1.0)
    with pytest.raises(RuntimeError, match="changes its answers too much"):
        export.quantize_int8(export.model_to_onnx_bytes(model), calibration, "tiny")


def test_the_default_predictor_takes_the_int8_graph_of_its_own_weights(int8_graph, tiny_checkpoint, tmp_path,
                                                                       monkeypatch, caplog):
    from deepage.checkpoint import load_checkpoint, save_checkpoint
    from deepage.inference import predictor

    monkeypatch.setattr(predictor, "DEFAULT_MODEL", tiny_checkpoint)
    monkeypatch.setattr(predictor, "DEFAULT_INT8_MODEL", int8_graph)
    monkeypatch.setattr(predictor, "DEFAULT_GRAPH", tmp_path / "absent.onnx")  # a copy with the int8 graph only
    with Predictor.default() as chosen:
        assert chosen.checkpoint_path == int8_graph and chosen.backend == "onnx"
    with Predictor.default(int8=False) as chosen:
        assert chosen.checkpoint_path == tiny_checkpoint
    with Predictor.default(backend="torch") as chosen:
        assert chosen.checkpoint_path == tiny_checkpoint and chosen.backend == "torch"

    ckpt = load_checkpoint(tiny_checkpoint)  # other weights beside the same int8 graph
    ckpt["state_dict"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    retrained = tmp_path / "retrained.pt"
    save_checkpoint(retrained, {k: v for k, v in ckpt.items() if k not in ("format", "versions")})
    monkeypatch.setattr(predictor, "DEFAULT_MODEL", retrained)
    with caplog.at_level("WARNING"), Predictor.default() as chosen:
        assert chosen.checkpoint_path == retrained
    assert "exported from other weights" in caplog.text
    with pytest.raises(ValueError, match="exported from other weights"):
        Predictor.default(int8=True)


def test_asking_for_an_int8_graph_the_copy_lacks_names_the_file(tiny_checkpoint, tmp_path, monkeypatch):
    from deepage.inference import predictor

    monkeypatch.setattr(predictor, "DEFAULT_MODEL", tiny_checkpoint)
    monkeypatch.setattr(predictor, "DEFAULT_INT8_MODEL", tmp_path / "default_model.int8.onnx")
    with pytest.raises(ValueError, match=r"no int8 graph .*default_model\.int8\.onnx.*deepage export"):
        Predictor.default(int8=True)
    with Predictor.default(backend="torch") as chosen:  # the rest of the copy still answers
        assert chosen.checkpoint_path == tiny_checkpoint


def test_the_int8_graph_is_matched_to_its_checkpoint_by_file_hash_first(int8_graph, tiny_checkpoint, tmp_path,
                                                                         monkeypatch):
    """The graph records the .pt file's SHA-256: the same file needs no torch to be trusted; a re-saved file
    with the same weights (e.g. calibrated again) is still matched, by its weights."""
    from deepage import checkpoint
    from deepage.checkpoint import load_checkpoint, save_checkpoint
    from deepage.inference import predictor
    from deepage.inference.onnx_graph import file_sha256, read_onnx_graph

    assert read_onnx_graph(int8_graph).record["checkpoint_sha256"] == file_sha256(tiny_checkpoint)
    monkeypatch.setattr(predictor, "DEFAULT_MODEL", tiny_checkpoint)
    monkeypatch.setattr(predictor, "DEFAULT_INT8_MODEL", int8_graph)
    monkeypatch.setattr(predictor, "DEFAULT_GRAPH", tmp_path / "absent.onnx")

    def no_loading(*a, **k):
        raise AssertionError("the checkpoint was loaded although its file hash matched")

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "load_checkpoint", no_loading)
        with Predictor.default(int8=True) as chosen:
            assert chosen.checkpoint_path == int8_graph
    resaved = tmp_path / "resaved.pt"
    ckpt = load_checkpoint(tiny_checkpoint)
    save_checkpoint(resaved, {**{k: v for k, v in ckpt.items() if k not in ("format", "versions")},
                              "metrics": {"note": "saved again"}})
    assert file_sha256(resaved) != file_sha256(tiny_checkpoint)
    monkeypatch.setattr(predictor, "DEFAULT_MODEL", resaved)
    with Predictor.default(int8=True) as chosen:
        assert chosen.checkpoint_path == int8_graph


@pytest.fixture(scope="module")
def int8_weights_graph(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("int8w") / "tiny.onnx", weights="int8")


def test_a_graph_with_int8_weights_computes_the_rounded_weights_in_float(int8_weights_graph, exported,
                                                                         tiny_checkpoint, tmp_path):
    """``--weights int8``: int8 initializers (a quarter of the bytes), the outputs of the model with its
    conv/linear weights rounded as ``deepage ensemble --weights int8`` rounds them, and, once ONNX Runtime
    has optimised it, a plain float graph (the Cast/Mul folded away: no dequantising on every call)."""
    import onnx
    import onnxruntime as ort

    from deepage.checkpoint import int8_round_trip
    from deepage.inference.onnx_graph import read_onnx_graph

    proto = onnx.load(str(int8_weights_graph))
    int8_bytes = sum(len(i.raw_data) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8)
    float_bytes = sum(len(i.raw_data) for i in onnx.load(str(exported)).graph.initializer)
    assert int8_bytes > 0.2 * float_bytes and int8_weights_graph.stat().st_size < 0.5 * exported.stat().st_size
    assert read_onnx_graph(int8_weights_graph).record["weight_storage"] == "int8"
    assert read_onnx_graph(exported).record["weight_storage"] == "float32"

    model = model_from_checkpoint(tiny_checkpoint)
    rounded = model_from_checkpoint(tiny_checkpoint)
    state = rounded.state_dict()
    rounded.load_state_dict({**state, **{k: v for k, v in int8_round_trip(state).items() if v.dtype == torch.float32}})
    n = model.spec.preprocessing.input_size
    x = torch.randn(4, 3, n, n, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want, plain = rounded(x).numpy(), model(x).numpy()
    got = onnx_session(int8_weights_graph).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(got - plain).max() > 1e-5  # the rounding is really there

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # portable: no layouts
    ort.InferenceSession(str(int8_weights_graph), options, providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}
    assert "Conv" in ops and not ops & {"Cast", "DequantizeLinear"}


def test_int8_weights_of_an_int8_checkpoint_cost_nothing_more(tiny_checkpoint, tmp_path):
    """A checkpoint stored with int8 weights exports with ``--weights int8`` to the answers of its float
    graph: its weights are on the int8 grid already (the graph's BatchNorm folding keeps them there)."""
    from deepage.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    stored = tmp_path / "int8.pt"
    save_checkpoint(stored, {**{k: v for k, v in ckpt.items() if k not in ("format", "versions")},
                             "weight_storage": "int8"})
    as_float = onnx_session(export_onnx(stored, tmp_path / "float.onnx"))
    as_int8 = onnx_session(export_onnx(stored, tmp_path / "int8w.onnx", weights="int8"))
    n = load_checkpoint(stored)["spec"]["preprocessing"]["input_size"]
    x = np.random.default_rng(3).standard_normal((4, 3, n, n)).astype(np.float32)
    np.testing.assert_allclose(as_int8.run([OUTPUT_NAME], {INPUT_NAME: x})[0],
                               as_float.run([OUTPUT_NAME], {INPUT_NAME: x})[0], atol=1e-4, rtol=0)


def test_int8_weights_are_refused_with_an_int8_calibration_or_an_unknown_storage(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="int8 weights already|int8 already"):
        export_onnx(tiny_checkpoint, tmp_path / "a.onnx", weights="int8",
                    int8_calibration=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="weights must be one of"):
        export_onnx(tiny_checkpoint, tmp_path / "b.onnx", weights="float16")
    assert list(tmp_path.iterdir()) == []


def test_the_default_predictor_prefers_the_float_graph_of_its_own_weights(int8_weights_graph, int8_graph,
                                                                          tiny_checkpoint, tmp_path, monkeypatch):
    from deepage.inference import predictor

    monkeypatch.setattr(predictor, "DEFAULT_MODEL", tiny_checkpoint)
    monkeypatch.setattr(predictor, "DEFAULT_GRAPH", int8_weights_graph)
    monkeypatch.setattr(predictor, "DEFAULT_INT8_MODEL", int8_graph)
    for int8 in ("auto", False):
        with Predictor.default(int8=int8) as chosen:
            assert chosen.checkpoint_path == int8_weights_graph and chosen.backend == "onnx"
    with Predictor.default(int8=True) as chosen:
        assert chosen.checkpoint_path == int8_graph
    with Predictor.default(backend="torch") as chosen:
        assert chosen.checkpoint_path == tiny_checkpoint and chosen.backend == "torch"
    monkeypatch.setattr(predictor, "DEFAULT_GRAPH", tmp_path / "absent.onnx")
    with Predictor.default(int8=False) as chosen:
        assert chosen.checkpoint_path == tiny_checkpoint
