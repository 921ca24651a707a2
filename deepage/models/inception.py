"""InceptionV3 (Szegedy et al. 2016), torchvision's architecture, pooled 2048-d features.

The architecture's unpadded stride-2 convolutions need at least 75 px; smaller inputs (the study's 64 px
CPU runs) are bilinearly upsampled to 75 px inside the model, the smallest size at which every layer is
defined, rather than changing the architecture. The auxiliary classifier is not built (the heads replace
both classifiers). Keys match torchvision's state dict, so its weight files load with ``weights=PATH``
(their ``fc.*`` and ``AuxLogits.*`` keys are dropped).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .classic import torchvision_pretrained
from .registry import Backbone, register_model

__all__ = ["InceptionV3Features", "MIN_NATIVE_SIZE"]

MIN_NATIVE_SIZE = 75  # smallest side every InceptionV3 layer accepts


class InceptionV3Features(torchvision.models.Inception3):
    """torchvision's Inception3 without classifiers: ``(B, 3, H, W)`` → ``(B, 2048)`` (global average
    pool, then its dropout). Input: ImageNet-normalised; ``transform_input`` is always on, re-normalising
    it to the ``(x - 0.5) / 0.5`` the original weights were trained on. (Always, not only with
    ``pretrained=True``: a checkpoint is rebuilt without ``pretrained`` and must compute the same thing.)"""

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__(num_classes=1000, aux_logits=False, transform_input=True, init_weights=True,
                         dropout=dropout)
        self.fc = nn.Identity()
        self.num_features = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < MIN_NATIVE_SIZE:
            scale = MIN_NATIVE_SIZE / min(x.shape[-2:])
            size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return super().forward(x)


@register_model("inceptionv3", default_input_size=299, normalization="imagenet", min_input_size=32,
                description="InceptionV3 (torchvision), 2048-d features; inputs < 75 px upsampled to 75")
def inceptionv3(input_size: int, pretrained: bool = False, dropout: float = 0.5) -> Backbone:
    """InceptionV3 from torchvision; ``pretrained=True`` downloads its ImageNet weights."""
    module = InceptionV3Features(dropout=dropout)
    if pretrained:
        hub = torchvision_pretrained(torchvision.models.inception_v3, "IMAGENET1K_V1", "inceptionv3")
        state = {k: v for k, v in hub.state_dict().items() if not k.startswith(("fc.", "AuxLogits."))}
        module.load_state_dict(state)
    return Backbone(module, module.num_features)
