"""Flip test-time augmentation: the same answer as averaging the image and its mirror by hand."""

from __future__ import annotations

import numpy as np
import torch

from deepage.answers import head_output
from deepage.checkpoint import model_from_checkpoint
from deepage.inference.predictor import Predictor


def test_tta_averages_the_mirror_image(tiny_checkpoint):
    model = model_from_checkpoint(tiny_checkpoint)
    x = torch.randn(3, 3, 32, 32)
    out = head_output(model, model.predict, x, tta_flip=True)
    age, probs = out.age, out.class_probs
    with torch.no_grad():
        a = model.predict(model(x))
        b = model.predict(model(torch.flip(x, dims=[3])))
    torch.testing.assert_close(age, (a.age + b.age) / 2)
    torch.testing.assert_close(probs["utk8"], (a.class_probs["utk8"] + b.class_probs["utk8"]) / 2)
    assert torch.allclose(probs["utk14"].sum(1), torch.ones(3))


def test_predictor_tta_matches_manual_average(tiny_checkpoint):
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    plain = Predictor.from_checkpoint(tiny_checkpoint, detect=False).predict_one(crop).faces[0]
    mirrored = Predictor.from_checkpoint(tiny_checkpoint, detect=False).predict_one(crop[:, ::-1].copy()).faces[0]
    tta = Predictor.from_checkpoint(tiny_checkpoint, detect=False, tta=True).predict_one(crop).faces[0]
    assert abs(tta.age - (plain.age + mirrored.age) / 2) < 1e-3
