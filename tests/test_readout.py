"""The heads' answers in NumPy (deepage.readout): exact values, the PyTorch heads read through them, and the
torch-free answer path of an ONNX graph (`deepage predict` without loading PyTorch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepage import readout
from deepage.labels import get_scheme
from deepage.models.heads import create_head
from deepage.preprocessing import Preprocessing, prepare_batch, prepare_eval_batch

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "deepage" / "assets" / "astronaut.jpg"


def _logits_of(probs: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(probs, 1e-30)).astype(np.float32)


def test_dex_reads_median_mean_and_class_masses_exactly():
    p = np.zeros((2, 101))
    p[0, [20, 30, 70]] = [0.25, 0.5, 0.25]  # median 30, mean 37.5
    p[1, [4, 5, 66]] = [0.5, 0.25, 0.25]  # median 4 (cumulative mass reaches 1/2 there), mean 19.75
    median = readout.read_dex(_logits_of(p), "median")
    mean = readout.read_dex(_logits_of(p), "mean")
    assert median.age.tolist() == [30.0, 4.0] and median.estimate == "median"
    np.testing.assert_allclose(mean.age, [37.5, 19.75], atol=1e-4)
    np.testing.assert_allclose(median.age_probs, p, atol=1e-6)
    # utk8: 1-5, 6-15, 16-25, 26-35, 36-45, 46-55, 56-65, 66+
    np.testing.assert_allclose(median.class_probs["utk8"][0], [0, 0, 0.25, 0.5, 0, 0, 0, 0.25], atol=1e-6)
    np.testing.assert_allclose(median.class_probs["utk8"][1], [0.75, 0, 0, 0, 0, 0, 0, 0.25], atol=1e-6)
    assert median.class_probs["utk14"].shape == (2, 14)


def test_temperature_sharpens_the_distribution_not_its_mode():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 101)).astype(np.float32)
    sharp, plain = readout.read_dex(logits, temperature=0.5), readout.read_dex(logits)
    np.testing.assert_allclose(sharp.age_probs, readout.softmax(logits * 2), rtol=1e-5)
    assert (sharp.age_probs.argmax(1) == plain.age_probs.argmax(1)).all()
    assert (sharp.age_probs.max(1) > plain.age_probs.max(1)).all()


def test_coral_reads_the_sum_of_its_ordinal_probabilities():
    logits = np.full((1, 100), -30.0, np.float32)
    logits[0, :25] = 30.0  # P(age > k) = 1 for k < 25, 0 after: age 25 for certain
    out = readout.read_coral(logits)
    assert out.age[0] == pytest.approx(25.0, abs=1e-4)
    assert out.age_probs[0].argmax() == 25 and out.age_probs[0].sum() == pytest.approx(1.0)
    assert out.class_probs["utk14"][0, get_scheme("utk14").classify(np.array([25]))[0]] == pytest.approx(1.0)


def test_classes_reader_keeps_the_scheme_name_even_custom():
    read = readout.reader_for("classes", "0,13,20")
    out = read(np.array([[0.0, 2.0, 0.0]], np.float32))
    assert list(out.class_probs) == ["custom:0,13,20"] and out.age is None
    assert out.class_probs["custom:0,13,20"].argmax() == 1


def test_reader_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="unknown head 'nope'"):
        readout.reader_for("nope")
    with pytest.raises(ValueError, match="needs a label scheme"):
        readout.reader_for("classes")
    with pytest.raises(ValueError, match="temperature must be positive"):
        readout.reader_for("dex", temperature=0)
    with pytest.raises(ValueError, match="not one of"):
        readout.reader_for("dex", estimate="mode")
    assert readout.out_features("dex") == 101 and readout.out_features("coral") == 100
    assert readout.out_features("classes", "utk14") == 14


@pytest.mark.parametrize(("kind", "kwargs", "width"), [("dex", {"estimate": "median", "temperature": 0.9}, 101),
                                                       ("dex", {"estimate": "mean"}, 101), ("coral", {}, 100),
                                                       ("classes", {"scheme": "utk8"}, 8)])
def test_the_torch_heads_answer_what_the_spec_reader_answers(kind, kwargs, width):
    """An ONNX graph is answered by the reader built from its spec; a PyTorch model by its head: the same."""
    kwargs = dict(kwargs)
    scheme = kwargs.pop("scheme", None)
    head = create_head(kind, 4, scheme=scheme, **kwargs)
    logits = torch.randn(5, width, generator=torch.Generator().manual_seed(1)) * 3
    by_head = head.predict(logits)
    by_spec = readout.reader_for(kind, scheme, **kwargs)(logits.numpy())
    for name, probs in by_spec.class_probs.items():
        np.testing.assert_array_equal(by_head.class_probs[name].numpy(), probs)
    if by_spec.age is not None:
        np.testing.assert_array_equal(by_head.age.numpy(), by_spec.age)


@pytest.mark.parametrize(("stored", "pre"), [
    (160, Preprocessing(input_size=150, stored_size=160, crop_pct=0.9375, normalization="dlib")),  # a plain crop
    (128, Preprocessing(input_size=112, stored_size=128, crop_pct=0.9, normalization="imagenet")),  # resampled
    # the bundled default's input: 112 px resampled from the central 150 of 160, in NumPy too
    (160, Preprocessing(input_size=112, stored_size=160, crop_pct=0.9375, normalization="inception")),
    (100, Preprocessing(input_size=112, stored_size=100, crop_pct=0.9375, normalization="unit")),  # upsampled
    (40, Preprocessing(input_size=32, stored_size=40, crop_pct=1.0, normalization="unit")),  # the whole side
])
def test_numpy_evaluation_transform_equals_the_torch_one(stored, pre):
    images = np.random.default_rng(3).integers(0, 256, (4, stored, stored, 3), dtype=np.uint8)
    got = prepare_eval_batch(images, pre)
    expected = prepare_batch(torch.from_numpy(images), pre).numpy()
    assert got.dtype == np.float32 and got.shape == (4, 3, pre.input_size, pre.input_size)
    assert got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8 RGB"):
        prepare_eval_batch(images.astype(np.float32), pre)


def _run_without_torch(code: str) -> str:
    """Run ``code`` in a fresh interpreter whose ``import torch`` fails: it must not need torch."""
    guard = ("import sys\nclass _NoTorch:\n    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'torch' or name.startswith('torch.'):\n"
             "            raise ImportError('torch is blocked in this test')\n"
             "sys.meta_path.insert(0, _NoTorch())\n")
    done = subprocess.run([sys.executable, "-c", guard + code], capture_output=True, text=True, cwd=REPO,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_deepage_predict_answers_with_the_bundled_graph_without_torch():
    """The bundled graph answers a photo with torch unimportable, and gives what the same graph gives in a
    process that has torch loaded (the answer path is one: deepage.readout)."""
    pytest.importorskip("onnxruntime")
    from deepage.inference.predictor import DEFAULT_GRAPH, Predictor

    if not DEFAULT_GRAPH.is_file():
        pytest.skip("this copy ships without the bundled graph")
    out = _run_without_torch(f"from deepage.cli import main\nsys.exit(main(['predict', {str(ASTRONAUT)!r}, "
                             "'--format', 'json', '--quiet']))\n")
    face = json.loads(out.strip().splitlines()[-1])["faces"][0]
    with Predictor.default() as predictor:
        assert predictor.backend == "onnx" and predictor.checkpoint_path == DEFAULT_GRAPH
        expected = predictor.predict_one(ASTRONAUT).faces[0].to_dict()
    assert face["box"] == expected["box"] and face["age"] == expected["age"]
    assert face["decision"] == expected["decision"]
    assert face["groups"]["utk8"]["label"] == expected["groups"]["utk8"]["label"]
    assert face["p_adult"] == pytest.approx(expected["p_adult"], abs=1e-3)
    assert face["decision"] in ("adult", "minor", "unsure") and face["p_adult"] is not None


def test_the_bundled_graph_computes_the_bundled_model():
    """``default_model.onnx``, what ``deepage predict`` answers with, is the ``.pt``'s network and
    calibration: the same weights (digest), temperature and operating points, the same outputs on random
    faces, and small enough to ship (int8-stored weights, under the 25 MB the default may weigh)."""
    pytest.importorskip("onnxruntime")
    from deepage.checkpoint import load_checkpoint, model_from_checkpoint, read_age_gates, weights_digest
    from deepage.inference.onnx_graph import INPUT_NAME, OUTPUT_NAME, read_onnx_graph
    from deepage.inference.predictor import DEFAULT_GRAPH, DEFAULT_MODEL
    from deepage.spec import ModelSpec

    if not DEFAULT_GRAPH.is_file():
        pytest.skip("this copy ships without the bundled graph")
    assert DEFAULT_GRAPH.stat().st_size < 25e6
    graph = read_onnx_graph(DEFAULT_GRAPH, threads=1)
    ckpt = load_checkpoint(DEFAULT_MODEL)
    assert graph.record["weight_storage"] == "int8"
    assert graph.record["weights_digest"] == weights_digest(ckpt["state_dict"])
    assert graph.spec == ModelSpec.from_dict(ckpt["spec"])  # the temperature is in the head's options
    gates = read_age_gates(graph.record, DEFAULT_GRAPH)
    assert 18 in gates and gates == read_age_gates(ckpt, DEFAULT_MODEL)
    model = model_from_checkpoint(DEFAULT_MODEL).eval()
    n = model.spec.preprocessing.input_size
    x = torch.randn(2, 3, n, n, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(graph.session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0], want,
                               atol=1e-4, rtol=0)
