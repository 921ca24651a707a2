"""The model zoo: every registered model × every head forward and backward on a tiny CPU batch, native
sizes, weight files, the registry's errors, and AL-ResNet's attention."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from deepage.labels import MAX_AGE
from deepage.models import create_model, list_models, model_info, register_model
from deepage.models.alresnet import ALResNet, boxes_to_pixels, crop_regions
from deepage.models.catalog import count_parameters, model_table

HEADS = {"classes": 14, "dex": MAX_AGE + 1, "coral": MAX_AGE}
STUDY_MODELS = {"softmax", "dnn", "cnn", "rnn", "lenet", "alexnet", "levi_hassner", "vgg19", "inceptionv3",
                "resnet50v2", "resnet18", "mobilenet_v2", "mobilenet_v2_tiny", "alresnet", "alresnet18"}
# forward at the native size takes more than a second or two with one thread
SLOW_NATIVE = {"vgg19", "inceptionv3", "alexnet", "alresnet", "resnet50v2", "levi_hassner", "mobilenet_v2",
               "resnet18"}


def _build(name: str, head: str, size: int, **kwargs):
    extra = {"num_classes": 14} if head == "classes" else {}
    return create_model(name, head=head, input_size=size, **extra, **kwargs)


def test_registry_holds_every_model_of_the_study():
    assert set(list_models()) >= STUDY_MODELS, STUDY_MODELS - set(list_models())


def _model_heads():
    for name in list_models():
        for head in HEADS:
            # VGG19's 140 M parameters take seconds per build: its dex head runs by default, the other two
            # heads are the same modules every other model already exercises
            slow = name == "vgg19" and head != "dex"
            yield pytest.param(name, head, marks=[pytest.mark.slow] if slow else [], id=f"{name}-{head}")


@pytest.mark.parametrize(("name", "head"), list(_model_heads()))
def test_forward_backward_at_64(name, head):
    torch.manual_seed(0)
    model = _build(name, head, 64)
    x = torch.randn(2, 3, 64, 64)
    ages = torch.tensor([3.0, 71.0])
    outputs = model(x)
    assert outputs.shape == (2, HEADS[head])
    loss = model.loss(outputs, ages)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad[:5]}"
    backbone_grads = [p.grad.abs().sum() for p in model.backbone.parameters() if p.requires_grad]
    assert not backbone_grads or max(backbone_grads) > 0  # (softmax's backbone is the pixels: no parameters)

    pred = model.predict(outputs.detach())
    if head == "classes":
        assert pred.age is None
        assert torch.allclose(pred.class_probs["utk14"].sum(dim=1), torch.ones(2), atol=1e-5)
    else:
        assert pred.age.shape == (2,)
        assert ((pred.age >= 0) & (pred.age <= MAX_AGE)).all()
        for scheme, width in (("utk14", 14), ("utk8", 8)):
            probs = pred.class_probs[scheme]
            assert probs.shape == (2, width)
            assert torch.allclose(probs.sum(dim=1), torch.ones(2), atol=1e-5)


def _sizes():
    for name in list_models():
        native = model_info(name)["default_input_size"]
        for size in sorted({128, native}):
            slow = name in SLOW_NATIVE and size > 128 or name == "vgg19"
            yield pytest.param(name, size, marks=[pytest.mark.slow] if slow else [], id=f"{name}-{size}")


@pytest.mark.parametrize(("name", "size"), list(_sizes()))
def test_forward_at_128_and_native_size(name, size):
    model = create_model(name, head="dex", input_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, MAX_AGE + 1)
    assert torch.isfinite(out).all()


def test_model_table_lists_every_model_with_its_parameters():
    rows = {r["name"]: r for r in model_table()}
    assert set(rows) == set(list_models())
    assert rows["vgg19"]["default_input_size"] == 224 and rows["inceptionv3"]["default_input_size"] == 299
    assert rows["cnn"]["normalization"] == "unit" and rows["alresnet"]["normalization"] == "imagenet"
    cnn = create_model("cnn", head="dex")
    assert rows["cnn"]["parameters"] == sum(p.numel() for p in cnn.parameters())
    # softmax on pixels: (3·64·64 + 1) × 101 weights with a dex head
    assert count_parameters("softmax") == (3 * 64 * 64 + 1) * (MAX_AGE + 1)


# --------------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("name", ["cnn", "lenet", "rnn", "levi_hassner", "alresnet18"])
def test_weights_file_round_trip(tmp_path, name):
    torch.manual_seed(0)
    source = create_model(name, head="dex", input_size=64).eval()
    path = tmp_path / "backbone.pt"
    torch.save(source.backbone.state_dict(), path)
    torch.manual_seed(1)
    loaded = create_model(name, head="dex", input_size=64, weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(source.forward_features(x), loaded.forward_features(x), atol=1e-6)


def test_mismatched_weights_file_names_the_keys(tmp_path):
    path = tmp_path / "lenet.pt"
    torch.save(create_model("lenet", input_size=64).backbone.state_dict(), path)
    expected = r"lenet\.pt does not fit PlainCNN: missing keys: features\.0\.0\.weight"
    with pytest.raises(ValueError, match=expected):
        create_model("cnn", input_size=64, weights=path)
    cnn_path = tmp_path / "cnn.pt"
    wide = create_model("cnn", input_size=64, channels=(32, 64, 128, 512))
    torch.save(wide.backbone.state_dict(), cnn_path)
    with pytest.raises(ValueError, match=r"shape mismatch: features\.6\.0\.weight"):
        create_model("cnn", input_size=64, weights=cnn_path)


def test_pretrained_without_network_says_to_pass_weights(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="pass weights=PATH"):
        create_model("alexnet", input_size=64, pretrained=True)
    with pytest.raises(RuntimeError, match="pass weights=PATH"):
        create_model("inceptionv3", input_size=64, pretrained=True)


@pytest.mark.parametrize("name", ["softmax", "cnn", "levi_hassner"])
def test_from_scratch_models_refuse_pretrained(name):
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model(name, input_size=64, pretrained=True)


@pytest.mark.parametrize("name", ["softmax", "dnn", "rnn"])
def test_pixel_models_reject_another_input_size(name):
    model = create_model(name, input_size=32)
    with pytest.raises(ValueError, match=r"built for \(B, 3, 32, 32\).*input_size=64"):
        model(torch.randn(1, 3, 64, 64))


def test_model_variants():
    def params(**kwargs) -> int:
        return sum(p.numel() for p in create_model("levi_hassner", input_size=64, **kwargs).parameters())

    # the 4th conv (384→256, 3×3) and the 6·6·(384 - 256) fewer inputs of the first FC layer
    assert params(conv_layers=3) - params() == -(384 * 256 * 9 + 256) + 36 * 128 * 512
    assert params() == count_parameters("levi_hassner", input_size=64)
    gru = create_model("rnn", input_size=32, cell="gru")
    assert isinstance(gru.backbone.rnn, torch.nn.GRU)
    assert gru(torch.randn(2, 3, 32, 32)).shape == (2, MAX_AGE + 1)
    with pytest.raises(ValueError, match="'lstm' or 'gru'"):
        create_model("rnn", input_size=32, cell="rnn")


# --------------------------------------------------------------------------------------------- registry
def test_registry_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="'cnn' is already registered"):
        register_model("cnn", default_input_size=64)(lambda input_size, pretrained=False: None)


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'vgg16'; choose one of \[.*'alresnet'.*'vgg19'\]"):
        create_model("vgg16")


def test_misspelt_head_option_is_an_error_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"head 'dex': unknown option\(s\) \['sigmaa'\]; valid: "
                                         r"\['dropout', 'estimate', 'l1_weight', 'sigma', 'temperature'\]"):
        create_model("cnn", input_size=64, head_kwargs={"sigmaa": 9})
    with pytest.raises(ValueError, match=r"head 'classes': unknown option\(s\) \['smoothing'\]"):
        create_model("cnn", head="classes", num_classes=8, input_size=64, head_kwargs={"smoothing": 0.1})
    model = create_model("cnn", input_size=64, head_kwargs={"sigma": 3.0})
    assert model.head.sigma == 3.0


def test_num_classes_with_an_age_head_is_refused():
    """create_model('cnn', num_classes=14) used to return a 101-way DEX model without a word."""
    with pytest.raises(ValueError, match="num_classes/scheme apply to head='classes' only.*14-way"):
        create_model("cnn", num_classes=14)
    with pytest.raises(ValueError, match="apply to head='classes' only"):
        create_model("cnn", head="coral", scheme="utk8")
    assert create_model("cnn", head="classes", num_classes=14).head.out_features == 14


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="needs input_size >= 64"):
        create_model("alexnet", input_size=32)


# --------------------------------------------------------------------------------------------- AL-ResNet
def test_boxes_to_pixels_and_crop():
    boxes = torch.tensor([[[0.0, 0.0, 1.0], [-0.5, 0.5, 0.5]]])  # whole image; bottom-left quarter
    assert boxes_to_pixels(boxes, 64, 32).tolist() == [[[0.0, 0.0, 32.0, 64.0], [0.0, 32.0, 16.0, 64.0]]]
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    crops = crop_regions(img, boxes, 2)  # (B·T, 1, 2, 2): 2×2 samples at pixel centres of each region
    assert crops.shape == (2, 1, 2, 2)
    assert crops[1, 0].tolist() == [[8.0, 9.0], [12.0, 13.0]]  # the bottom-left 2×2 pixels exactly


def test_crop_regions_samples_where_affine_grid_would():
    """The written-out grid (ONNX opset 17 has no affine_grid) is affine_grid's for a scale-and-shift box."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 40, 36)
    boxes = torch.tensor([[[0.1, -0.2, 0.3], [0.0, 0.0, 0.6]], [[-0.5, 0.4, 0.25], [0.2, 0.1, 0.5]]])
    cx, cy, s = boxes.reshape(4, 3).unbind(-1)
    zero = torch.zeros_like(s)
    theta = torch.stack([torch.stack([s, zero, cx], -1), torch.stack([zero, s, cy], -1)], dim=1)
    grid = torch.nn.functional.affine_grid(theta, [4, 3, 12, 12], align_corners=False)
    expected = torch.nn.functional.grid_sample(images.repeat_interleave(2, dim=0), grid, mode="bilinear",
                                               padding_mode="border", align_corners=False)
    torch.testing.assert_close(crop_regions(images, boxes, 12), expected, atol=1e-4, rtol=0)


def test_alresnet_regions_stay_inside_and_follow_the_input():
    torch.manual_seed(0)
    model = ALResNet(trunk="resnet18", input_size=64, steps=3).eval()
    x = torch.randn(2, 3, 64, 64)
    x[1] = x[1] * 0.2 + torch.linspace(-2, 2, 64)  # a different image: a horizontal gradient
    with torch.no_grad():
        boxes = model.attended_regions(x)
        details = model.forward_details(x)
    assert boxes.shape == (2, 3, 4)
    assert (boxes >= 0).all() and (boxes[..., [0, 2]] <= 64).all() and (boxes[..., [1, 3]] <= 64).all()
    assert (boxes[..., 2] > boxes[..., 0]).all() and (boxes[..., 3] > boxes[..., 1]).all()
    assert torch.allclose(details.boxes, boxes)
    assert details.features.shape == (2, 512)
    assert torch.allclose(details.attention.sum(dim=(2, 3)), torch.ones(2, 3), atol=1e-5)
    assert (boxes[0] - boxes[1]).abs().max() > 0.1, "two different images gave the same regions"


def test_alresnet_steps_and_extreme_boxes_stay_inside():
    torch.manual_seed(0)
    model = ALResNet(trunk="resnet18", input_size=48, steps=2, min_scale=0.1, max_scale=0.3).eval()
    with torch.no_grad():
        model.attention.box.bias.copy_(torch.tensor([50.0, -50.0, 0.0]))  # push the centre far out
        boxes = model.attended_regions(torch.randn(3, 3, 48, 48))
    assert boxes.shape == (3, 2, 4)
    assert (boxes >= 0).all() and (boxes <= 48).all()
    assert torch.allclose(boxes[..., 2], torch.full((3, 2), 48.0), atol=1e-3)  # pinned to the right edge


def test_alresnet_gradient_reaches_the_boxes():
    torch.manual_seed(0)
    model = create_model("alresnet18", head="dex", input_size=64)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert model.backbone.attention.box.bias.grad.abs().sum() > 0


def test_alresnet18_overfits_a_tiny_set():
    """A few dozen synthetic 'faces' whose brightness and blob size depend on age: the loss must fall."""
    torch.manual_seed(0)
    n = 24
    ages = torch.linspace(5, 85, n)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    radius = (4 + ages / 4).view(n, 1, 1)
    blob = (((yy - 32) ** 2 + (xx - 32) ** 2).sqrt() < radius).float()
    x = (ages / 100).view(n, 1, 1, 1) + 0.5 * blob.unsqueeze(1) + 0.05 * torch.randn(n, 3, 64, 64)
    model = create_model("alresnet18", head="dex", input_size=64)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def full_loss() -> float:
        with torch.no_grad():
            return model.loss(model(x), ages).item()

    before = full_loss()
    for step in range(24):  # 8 epochs of mini-batches of 8
        batch = torch.arange(step % 3, n, 3)  # every third image: each batch spans all ages
        opt.zero_grad()
        model.loss(model(x[batch]), ages[batch]).backward()
        opt.step()
    after = full_loss()
    print(f"loss {before:.3f} -> {after:.3f}")
    assert after < 0.5 * before, (before, after)
