"""ResNets from timm: ResNet50V2 (the study's best single backbone, pre-activation) and ResNet-18."""

from __future__ import annotations

import timm

from .registry import Backbone, register_model

__all__ = ["timm_backbone"]


def timm_backbone(timm_name: str, pretrained: bool, **kwargs) -> Backbone:
    """A timm model without its classifier: ``(B, 3, H, W)`` → pooled ``(B, F)`` features."""
    try:
        module = timm.create_model(timm_name, pretrained=pretrained, num_classes=0, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub download failures come in many types
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not fetch pretrained weights for {timm_name!r} ({exc}); without network, pass "
            "weights=PATH to a local file instead"
        ) from exc
    return Backbone(module, module.num_features)


@register_model("resnet50v2", default_input_size=224, description="ResNet50V2, pre-activation (timm resnetv2_50)")
def resnet50v2(input_size: int, pretrained: bool = False) -> Backbone:
    """ResNet50V2 (He et al. 2016, identity mappings) from timm."""
    return timm_backbone("resnetv2_50", pretrained)


@register_model("resnet18", default_input_size=224, description="ResNet-18 (timm)")
def resnet18(input_size: int, pretrained: bool = False) -> Backbone:
    """ResNet-18 from timm."""
    return timm_backbone("resnet18", pretrained)
