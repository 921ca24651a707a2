"""Flip test-time augmentation: the same answer as averaging the image and its mirror by hand."""

from __future__ import annotations

import numpy as np
import torch

from deepage.answers import read_batch
from deepage.checkpoint import model_from_checkpoint
from deepage.inference.predictor import Predictor


def test_tta_averages_the_mirror_image(tiny_checkpoint):
    model = model_from_checkpoint(tiny_checkpoint)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = read_batch(model, model.read, x, tta_flip=True)
        a = model.predict(model(x))
        b = model.predict(model(torch.flip(x, dims=[3])))
    np.testing.assert_allclose(out.age, ((a.age + b.age) / 2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(out.class_probs["utk8"], ((a.class_probs["utk8"] + b.class_probs["utk8"]) / 2).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(out.class_probs["utk14"].sum(1), np.ones(3), rtol=1e-6)


def test_tta_on_numpy_input_matches_torch_input(tiny_checkpoint):
    """The answer path mirrors a NumPy batch (the ONNX backend's) as it mirrors a tensor."""
    model = model_from_checkpoint(tiny_checkpoint)
    x = torch.randn(3, 3, 32, 32)

    def numpy_logits(arr: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(arr)).numpy()

    with torch.no_grad():
        from_tensor = read_batch(model, model.read, x, tta_flip=True)
    from_array = read_batch(numpy_logits, model.read, x.numpy(), tta_flip=True)
    np.testing.assert_array_equal(from_array.age, from_tensor.age)
    np.testing.assert_array_equal(from_array.class_probs["utk14"], from_tensor.class_probs["utk14"])


def test_predictor_tta_matches_manual_average(tiny_checkpoint):
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    plain = Predictor.from_checkpoint(tiny_checkpoint, detect=False).predict_one(crop).faces[0]
    mirrored = Predictor.from_checkpoint(tiny_checkpoint, detect=False).predict_one(crop[:, ::-1].copy()).faces[0]
    tta = Predictor.from_checkpoint(tiny_checkpoint, detect=False, tta=True).predict_one(crop).faces[0]
    assert abs(tta.age - (plain.age + mirrored.age) / 2) < 1e-3
