"""Classic CNNs of the study: LeNet, AlexNet (torchvision's architecture) and the Levi & Hassner (2015)
age/gender network.

All three end in an adaptive pool before their fully connected layers, so they run at any input side at
or above their ``min_input_size`` (LeNet 16, AlexNet and Levi-Hassner 64); smaller images than the native
size are pooled to the same grid (a 1×1 map is repeated), which keeps the layer shapes and weights valid.

Fully connected layers are named ``dense`` (not ``classifier``/``fc``): the registry's weight loader drops
``classifier.*``/``fc.*`` keys as "the file's own classifier", so those names would not survive a
``weights=PATH`` round trip. ``features.*`` keep torchvision's names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torchvision

from .registry import Backbone, register_model
from .simple import no_pretrained_weights

__all__ = ["LeNet", "AlexNetFeatures", "LeviHassner", "torchvision_pretrained"]


def torchvision_pretrained(factory: Callable[..., nn.Module], weights: str, name: str, **kwargs) -> nn.Module:
    """``factory(weights=weights, **kwargs)`` (a torchvision model builder); a failed download becomes a
    RuntimeError that tells the user to pass ``weights=PATH`` instead."""
    try:
        return factory(weights=weights, **kwargs)
    except Exception as exc:  # noqa: BLE001 - download failures come as URLError, OSError, HTTPError...
        raise RuntimeError(
            f"could not fetch torchvision's pretrained {weights} weights for {name!r} ({exc}); without "
            "network, pass weights=PATH to a local file saved from this backbone instead"
        ) from exc


# ---------------------------------------------------------------------------------------------- models
class LeNet(nn.Module):
    """LeNet-5 layout (LeCun et al. 1998) on RGB: conv5x5(6) → pool → conv5x5(16) → pool → FC 120 → FC 84.
    ReLU and max pooling instead of the original scaled tanh and subsampling (as in the usual modern
    re-implementations). ``(B, 3, H, W)`` → ``(B, 84)``; native 32 px, where the adaptive pool is a no-op."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(5)
        self.dense = nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True), nn.Linear(120, 84),
                                   nn.ReLU(inplace=True))
        self.num_features = 84

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.pool(self.features(x)).flatten(1))


class AlexNetFeatures(nn.Module):
    """torchvision's AlexNet without its last layer: ``(B, 3, H, W)`` → ``(B, 4096)`` (the fc7 activations).
    ``features`` and ``avgpool`` are torchvision's own modules; ``dense`` is its ``classifier[:-1]``."""

    def __init__(self, dropout: float = 0.5, pretrained: bool = False) -> None:
        super().__init__()
        if pretrained:
            net = torchvision_pretrained(torchvision.models.alexnet, "IMAGENET1K_V1", "alexnet")
        else:
            net = torchvision.models.alexnet(weights=None, dropout=dropout)
        self.features = net.features
        self.avgpool = net.avgpool  # AdaptiveAvgPool2d(6): any input ≥ 63 px
        self.dense = net.classifier[:-1]
        self.num_features = net.classifier[-1].in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.avgpool(self.features(x)).flatten(1))


class LeviHassner(nn.Module):
    """Levi & Hassner, "Age and gender classification using convolutional neural networks" (CVPR-W 2015).

    Paper: conv 7×7/4 (96) → max 3/2 → LRN; conv 5×5 (256) → max 3/2 → LRN; conv 3×3 (384) → max 3/2;
    FC 512 → dropout 0.5 → FC 512 → dropout 0.5 (then the class layer, here the head). Native input 227.
    ``conv_layers=4`` (the default, the study's "4C2F" variant) adds a 3×3 conv (256) after the third,
    before its pool; ``conv_layers=3`` is the paper's net. An adaptive pool to the paper's 6×6 grid makes
    every input side ≥ 64 valid. ``(B, 3, H, W)`` → ``(B, 512)``.
    """

    def __init__(self, conv_layers: int = 4, dropout: float = 0.5) -> None:
        super().__init__()
        if conv_layers not in (3, 4):
            raise ValueError(f"levi_hassner conv_layers must be 3 (paper) or 4 (study), got {conv_layers}")
        lrn = dict(size=5, alpha=1e-4, beta=0.75)
        layers: list[nn.Module] = [
            nn.Conv2d(3, 96, 7, stride=4), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.LocalResponseNorm(**lrn),
            nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.LocalResponseNorm(**lrn),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        ]
        channels = 384
        if conv_layers == 4:
            layers += [nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True)]
            channels = 256
        layers.append(nn.MaxPool2d(3, 2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(6)
        self.dense = nn.Sequential(nn.Linear(channels * 36, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                   nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(dropout))
        # The paper draws weights from N(0, 0.01) (a Caffe recipe); at 4 conv + 2 FC layers that shrinks the
        # activations ~500-fold, so He initialisation is used instead (as torchvision does for VGG).
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out" if isinstance(m, nn.Conv2d) else "fan_in",
                                        nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.num_features = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.pool(self.features(x)).flatten(1))


# ---------------------------------------------------------------------------------------------- builders
@register_model("lenet", default_input_size=32, normalization="unit", min_input_size=16,
                description="LeNet-5 layout (2 conv + 2 FC, ReLU/max-pool), adaptive pool for any size (own)")
def lenet(input_size: int, pretrained: bool = False) -> Backbone:
    """LeNet-5 style network (no pretrained weights exist)."""
    no_pretrained_weights("lenet", pretrained)
    module = LeNet()
    return Backbone(module, module.num_features)


@register_model("alexnet", default_input_size=224, normalization="imagenet", min_input_size=64,
                description="AlexNet (torchvision), fc7 features; ImageNet weights via pretrained=True")
def alexnet(input_size: int, pretrained: bool = False, dropout: float = 0.5) -> Backbone:
    """torchvision's AlexNet (Krizhevsky et al. 2012, one-GPU variant)."""
    module = AlexNetFeatures(dropout, pretrained)
    return Backbone(module, module.num_features)


@register_model("levi_hassner", default_input_size=227, normalization="unit", min_input_size=64,
                description="Levi & Hassner 2015 age net: 4 conv (paper: 3, conv_layers=3) + 2 FC 512 (own)")
def levi_hassner(input_size: int, pretrained: bool = False, conv_layers: int = 4,
                 dropout: float = 0.5) -> Backbone:
    """Levi & Hassner (2015) age classification network (trained from scratch in the paper)."""
    no_pretrained_weights("levi_hassner", pretrained)
    module = LeviHassner(conv_layers, dropout)
    return Backbone(module, module.num_features)
