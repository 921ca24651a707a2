"""dlib's face-recognition ResNet in PyTorch: the port is proven against dlib's own descriptor, the weight
reader refuses files that do not fit, and the transfer options of the trainer (trunk learning-rate
multiplier, linear probe) do what they say."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from deepage.config import TrainConfig
from deepage.models import create_model, model_info
from deepage.models.dlib_resnet import (
    DlibResNet,
    down_block_sides,
    keeps_native_geometry,
    load_dlib_weights,
    offline_dlib_weights,
)
from deepage.preprocessing import images_to_batch
from deepage.training.engine import make_optimizer, train

ASTRONAUT = "deepage/assets/astronaut.jpg"


@pytest.fixture(scope="module")
def chip_and_reference() -> tuple[np.ndarray, np.ndarray]:
    """The bundled photo's face as dlib's own 150 x 150 chip, and dlib's descriptor of that chip."""
    import dlib
    from PIL import Image

    from deepage.faces import landmark_model_path

    rgb = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    box = dlib.get_frontal_face_detector()(rgb, 1)[0]
    shape = dlib.shape_predictor(str(landmark_model_path()))(rgb, box)
    chip = dlib.get_face_chip(rgb, shape, size=150, padding=0.25)
    network = dlib.face_recognition_model_v1(str(offline_dlib_weights()))
    return chip, np.array(network.compute_face_descriptor(chip))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_port_matches_dlibs_descriptor(chip_and_reference):
    chip, reference = chip_and_reference
    # Through the registry and the project's one preprocessing ("dlib" normalisation, no crop at 150 px).
    model = create_model("dlib_resnet", input_size=150, stored_size=150, crop_pct=1.0, pretrained=True).eval()
    assert model.spec.preprocessing.normalization == "dlib"
    with torch.no_grad():
        ours = model.backbone.descriptor(images_to_batch([chip], model.spec.preprocessing))[0].numpy()
    assert _cosine(ours, reference) >= 0.999
    assert np.abs(ours - reference).max() < 1e-3  # float weights: the same numbers, not just the direction
    random = create_model("dlib_resnet", input_size=150, stored_size=150, crop_pct=1.0).eval()
    with torch.no_grad():
        other = random.backbone.descriptor(images_to_batch([chip], model.spec.preprocessing))[0].numpy()
    assert _cosine(other, reference) < 0.9  # the check can fail: random weights do not pass it


def test_shapes_follow_dlibs_padding_rule():
    net = DlibResNet().eval()
    with torch.no_grad():
        assert net.forward_features(torch.zeros(1, 3, 150, 150)).shape == (1, 256, 2, 2)
        assert net(torch.zeros(2, 3, 150, 150)).shape == (2, 256)
        assert DlibResNet(feature="descriptor").eval()(torch.zeros(2, 3, 112, 112)).shape == (2, 128)
    assert model_info("dlib_resnet")["pretrained_offline"] is True
    with pytest.raises(ValueError, match="norm must be"):
        DlibResNet(norm="groupnorm")


def test_down_block_sides_predict_the_maps_and_flag_sizes_that_change_the_last_block():
    assert down_block_sides(150) == [(17, 17), (8, 8), (3, 4), (1, 2)]
    net = DlibResNet().eval()
    with torch.no_grad():
        for size in (150, 166, 167, 188, 200):
            last = max(down_block_sides(size)[-1])
            assert net.forward_features(torch.zeros(1, 3, size, size)).shape[-2:] == (last, last), size
    assert [keeps_native_geometry(s) for s in (147, 150, 166, 167, 188, 198)] == [True] * 3 + [False] * 3
    with pytest.warns(UserWarning, match="188 px: its last down-block fills its map"):
        create_model("dlib_resnet", input_size=188, pretrained=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_model("dlib_resnet", input_size=166, pretrained=True)


def test_norm_variants_start_from_the_same_function(chip_and_reference):
    chip = chip_and_reference[0]
    x = images_to_batch([chip], create_model("dlib_resnet", input_size=150, stored_size=150,
                                              crop_pct=1.0).spec.preprocessing)
    outputs = []
    for norm in ("affine", "frozen_affine", "batchnorm"):
        net = DlibResNet(norm=norm, standardize=False)
        load_dlib_weights(net, offline_dlib_weights())
        with torch.no_grad():
            outputs.append(net.eval().descriptor(x)[0].numpy())
    assert _cosine(outputs[0], outputs[1]) > 0.99999 and _cosine(outputs[0], outputs[2]) > 0.9999
    assert not any(p.requires_grad for n, p in DlibResNet(norm="frozen_affine").named_parameters() if "norm" in n)


def test_reader_refuses_a_file_that_does_not_fit(tmp_path):
    data = offline_dlib_weights().read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.dat"):
        load_dlib_weights(DlibResNet(), truncated)
    other = tmp_path / "other.dat"
    other.write_bytes(b"\x01\x01\x01\x0dloss_metric_2" + bytes(1000))
    with pytest.raises(ValueError, match=r"other\.dat: 0 conv, 0 affine and 0 fc layers"):
        load_dlib_weights(DlibResNet(), other)


def test_trunk_learning_rate_multiplier_groups():
    model = create_model("dlib_resnet", input_size=64)
    optimizer = make_optimizer(TrainConfig(model="dlib_resnet", backbone_lr_mult=0.1), model)
    by_id = {id(p): g["lr_mult"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert by_id[id(names["backbone.conv1.weight"])] == 0.1
    assert by_id[id(names["backbone.neck.weight"])] == 1.0  # the new standardisation learns at the head's rate
    assert by_id[id(names["head.fc.1.weight"])] == 1.0
    assert len(by_id) == sum(p.requires_grad for p in names.values())
    assert id(names["backbone.fc.weight"]) not in by_id  # the unused identity layer is frozen
    plain = make_optimizer(TrainConfig(model="dlib_resnet"), model)
    assert len(plain.param_groups) == 2  # the grouping of runs made before the option: they still resume


def test_linear_probe_keeps_the_trunk_fixed(tiny_h5, tmp_path):
    config = TrainConfig(data=str(tiny_h5), model="mobilenet_v2_tiny", head="dex", input_size=32, epochs=1,
                         batch_size=16, out_dir=str(tmp_path), name="probe", progress=False, num_threads=1,
                         linear_probe_epochs=1.0, ema_decay=0.0, augment=False)
    torch.manual_seed(config.seed)
    start = create_model("mobilenet_v2_tiny", input_size=32, stored_size=32).state_dict()
    result = train(config)
    trained = torch.load(result.run_dir / "best.pt", weights_only=True)["state_dict"]
    trunk = [k for k in trained if k.startswith("backbone.") and k.endswith("weight")]
    assert trunk and all(torch.equal(trained[k], start[k]) for k in trunk)
    assert not torch.equal(trained["head.fc.1.weight"], start["head.fc.1.weight"])


def test_onnx_export_matches_torch():
    """The default model may be this network: its zero-padded additions must survive the ONNX export."""
    pytest.importorskip("onnxruntime")
    from deepage.inference.export import INPUT_NAME, OUTPUT_NAME, model_to_onnx_bytes, onnx_session

    torch.manual_seed(0)
    model = create_model("dlib_resnet", input_size=150, stored_size=160, crop_pct=0.9375).eval()
    x = torch.randn(3, 3, 150, 150)
    with torch.no_grad():
        expected = model(x).numpy()
    got = onnx_session(model_to_onnx_bytes(model)).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------- al_dlib_resnet
def _trained_looking_dlib(seed: int = 0) -> torch.nn.Module:
    """A ``dlib_resnet`` with random (not identity) affine layers and neck statistics, like a trained one."""
    torch.manual_seed(seed)
    model = create_model("dlib_resnet", input_size=150, stored_size=160, crop_pct=0.9375)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "neck" in name:
                param.uniform_(0.5, 1.5) if name.endswith("weight") else param.uniform_(-0.1, 0.1)
        model.backbone.neck.running_mean.uniform_(0.5, 1.5)
    return model.eval()


def test_al_dlib_resnet_starts_as_the_plain_model_it_adopts(tmp_path):
    """Zero-initialised residual fusion: after ``adopt_checkpoint`` the AL model's outputs are the plain
    model's on the 150 px view, and the boxes lie inside the input."""
    plain = _trained_looking_dlib()
    al = create_model("al_dlib_resnet", input_size=188, stored_size=200, crop_pct=0.9375).eval()
    state = plain.state_dict()
    al.backbone.adopt_checkpoint("dlib_resnet", {k.removeprefix("backbone."): v for k, v in state.items()
                                                 if k.startswith("backbone.")})
    al.head.load_state_dict(plain.head.state_dict())
    x = torch.randn(2, 3, 188, 188)
    view = torch.nn.functional.interpolate(x, size=(150, 150), mode="bilinear", align_corners=False,
                                           antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(al(x), plain(view))
        torch.testing.assert_close(al(view), plain(view))  # a 150 px input skips the resize
        details = al.backbone.forward_details(x)
    assert details.features.shape == (2, 256)
    assert details.boxes.shape == (2, 3, 4) and details.attention.shape == (2, 3, 8, 8)
    assert bool((details.boxes >= -1e-4).all() and (details.boxes <= 188 + 1e-4).all())
    torch.testing.assert_close(details.attention.sum(dim=(2, 3)), torch.ones(2, 3))
    # the local network took the trunk's first ten blocks
    torch.testing.assert_close(al.backbone.local_net.blocks[9].conv2.weight, plain.backbone.blocks[9].conv2.weight)
    with pytest.raises(ValueError, match="dlib_resnet checkpoint"):
        al.backbone.adopt_checkpoint("mobilenet_v2", {})


def test_al_dlib_resnet_local_branch_learns_and_new_layers_get_the_heads_rate():
    model = create_model("al_dlib_resnet", input_size=160)
    x = torch.randn(2, 3, 160, 160)
    loss = model.loss(model(x), torch.tensor([30.0, 60.0]))
    loss.backward()
    names = dict(model.named_parameters())
    assert names["backbone.local_proj.weight"].grad.abs().sum() > 0  # the zero-initialised fusion is trained
    optimizer = make_optimizer(TrainConfig(model="al_dlib_resnet", backbone_lr_mult=0.1), model)
    by_id = {id(p): g["lr_mult"] for g in optimizer.param_groups for p in g["params"]}
    for name in ("backbone.trunk.conv1.weight", "backbone.local_net.conv1.weight"):
        assert by_id[id(names[name])] == 0.1, name
    for name in ("backbone.attention.cell.weight_ih", "backbone.local_proj.weight", "backbone.local_norm.weight",
                 "backbone.trunk.neck.weight", "head.fc.1.weight"):
        assert by_id[id(names[name])] == 1.0, name


def test_init_from_a_dlib_resnet_checkpoint_builds_the_al_model_around_it(tmp_path):
    from deepage.checkpoint import save_checkpoint
    from deepage.training.engine import _init_weights_from

    plain = _trained_looking_dlib(seed=1)
    path = tmp_path / "plain.pt"
    save_checkpoint(path, {"spec": plain.spec.to_dict(), "state_dict": plain.state_dict()})
    al = create_model("al_dlib_resnet", input_size=150).eval()
    _init_weights_from(al, str(path))
    x = torch.randn(2, 3, 150, 150)
    with torch.no_grad():
        torch.testing.assert_close(al(x), plain(x))
    other = create_model("dlib_resnet", head="coral", input_size=150)
    save_checkpoint(tmp_path / "coral.pt", {"spec": other.spec.to_dict(), "state_dict": other.state_dict()})
    with pytest.raises(ValueError, match="init_from.*head"):
        _init_weights_from(create_model("al_dlib_resnet", input_size=150), str(tmp_path / "coral.pt"))


def test_al_dlib_resnet_exports_to_onnx():
    """Its resize (a matrix, not antialiased interpolate) and crops (no affine_grid) export at opset 17."""
    pytest.importorskip("onnxruntime")
    from deepage.inference.export import INPUT_NAME, OUTPUT_NAME, model_to_onnx_bytes, onnx_session

    torch.manual_seed(0)
    model = create_model("al_dlib_resnet", input_size=188, stored_size=200, crop_pct=0.9375).eval()
    with torch.no_grad():
        model.backbone.local_proj.weight.normal_(0, 0.1)  # so that the local branch shows in the output
    x = torch.randn(2, 3, 188, 188)
    view = torch.nn.functional.interpolate(x, size=(150, 150), mode="bilinear", align_corners=False,
                                           antialias=True)
    torch.testing.assert_close(model.backbone.view_matrix @ x @ model.backbone.view_matrix.T, view,
                               atol=1e-5, rtol=0)
    with torch.no_grad():
        expected = model(x).numpy()
    got = onnx_session(model_to_onnx_bytes(model)).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
