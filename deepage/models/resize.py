"""Resizes inside a model graph that export to ONNX (shared by ``dlib_resnet`` and ``ensemble``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["antialiased_resize_matrix"]


def antialiased_resize_matrix(source: int, target: int) -> torch.Tensor:
    """``(target, source)``: row ``i`` holds the weights of ``F.interpolate(..., antialias=True)``'s bilinear
    resize for output pixel ``i`` (the resize is separable, so ``R x Rᵀ`` is the 2-D resize)."""
    if source == target:
        return torch.eye(source)
    eye = torch.eye(source).reshape(1, 1, source, source)
    return F.interpolate(eye, size=(target, source), mode="bilinear", align_corners=False, antialias=True)[0, 0]
