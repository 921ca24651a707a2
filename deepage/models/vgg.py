"""VGG19 (Simonyan & Zisserman 2015), torchvision's architecture, fc7 features.

torchvision ends the conv stack in an ``AdaptiveAvgPool2d(7)``, so any input side ≥ 32 runs (at 64 px the
2×2 map is spread over the 7×7 grid the fully connected layers expect). The fully connected layers are
named ``dense`` (torchvision: ``classifier[:-1]``) so that they survive the registry's weight loader,
which drops ``classifier.*`` keys; ``features.*`` keep torchvision's names.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from .classic import torchvision_pretrained
from .registry import Backbone, register_model

__all__ = ["VGGFeatures"]


class VGGFeatures(nn.Module):
    """torchvision's VGG19 (``batch_norm=True``: VGG19-BN) without its last layer:
    ``(B, 3, H, W)`` → ``(B, 4096)``."""

    def __init__(self, batch_norm: bool = False, dropout: float = 0.5, pretrained: bool = False) -> None:
        super().__init__()
        factory = torchvision.models.vgg19_bn if batch_norm else torchvision.models.vgg19
        if pretrained:
            net = torchvision_pretrained(factory, "IMAGENET1K_V1", "vgg19" + ("_bn" if batch_norm else ""))
        else:
            net = factory(weights=None, dropout=dropout)
        self.features = net.features
        self.avgpool = net.avgpool
        self.dense = net.classifier[:-1]
        self.num_features = net.classifier[-1].in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.avgpool(self.features(x)).flatten(1))


@register_model("vgg19", default_input_size=224, normalization="imagenet", min_input_size=32,
                description="VGG19 (torchvision), fc7 features; batch_norm=True for VGG19-BN")
def vgg19(input_size: int, pretrained: bool = False, batch_norm: bool = False,
          dropout: float = 0.5) -> Backbone:
    """VGG19 from torchvision; ``pretrained=True`` downloads its ImageNet weights."""
    module = VGGFeatures(batch_norm, dropout, pretrained)
    return Backbone(module, module.num_features)
