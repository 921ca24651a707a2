"""AL-ResNet: a ResNet with an attention LSTM that picks age-sensitive regions of the face.

After Zhang et al., "Fine-grained age estimation in the wild with attention LSTM networks"
(arXiv 1805.10445; IEEE TCSVT 30(9), 2020). The model has three parts::

    image (B,3,H,W) ──► global ResNet trunk ──► feature map V (B,C,h,w) ──► global average pool g (B,C)
          │                                          │
          │                          attention LSTM, T steps: soft attention over the h·w positions of V,
          │                          conditioned on the LSTM state; each step emits one box (centre, scale)
          │                                          │
          └──► differentiable crop (affine_grid + grid_sample) of T regions (B·T,3,R,R)
                     ──► local CNN, shared by the regions ──► local features (B, T·L)
    fuse: ReLU(Linear([g, local])) ──► (B, F) features (the registry adds the classes/dex/coral head)

What follows the paper, what follows the authors' released code, and what is chosen here:

* **Paper.** A ResNet (or RoR) pretrained on ImageNet is the *global* network; an LSTM unit "obtains the
  coordinates of the age-sensitive region automatically" from the global network's features; the region
  is cut from the face and a *local* network encodes it; global and local features are combined for the
  final prediction (DEX expected age for regression, classes on Adience). The study this project
  reproduces uses ResNet50V2 as the global trunk (``alresnet``, timm ``resnetv2_50``).
* **Released code** (github.com/PRIS-CV/Fine-Grained-Age-Estimation-in-the-Wild-With-Attention-LSTM-Networks,
  ``resnet.multiST.torch/models/pre_st_dogs.lua``, Lua Torch): an ImageNet ResNet-34 with *two spatial
  transformers* inserted inside the trunk, on the layer-2 (28×28×128) and layer-3 (14×14×256) feature
  maps, each with its own localisation net (max-pool, two 5×5 convs with 64 and 300 channels, FC 64, a
  6-parameter affine transform initialised to the identity) and bilinear sampling. That code contains no
  LSTM. Following it: the regions are sampled with a spatial transformer (``affine_grid``/``grid_sample``,
  differentiable w.r.t. the box), and ``trunk="resnet34"`` rebuilds its global network.
* **Chosen here, where both are silent.** (1) The attention LSTM follows "show, attend and tell"
  (Xu et al. 2015): additive soft attention ``softmax(wᵀ tanh(W_v V + W_h h))`` over the spatial
  positions of the *last* trunk feature map, an ``LSTMCell`` fed the attended feature and the previous box,
  state initialised from the mean feature; ``steps`` T = 3 regions by default. (2) A box is a square with
  a centre and a half-side ``s`` (no rotation/shear, unlike the released 6-parameter transform, so that it
  can be drawn and stays a face region): ``s = s_min + (s_max - s_min)·sigmoid(·)`` and the centre is the
  attention's expected location plus a learned offset, squashed by ``(1 - s)·tanh(u / (1 - s))`` so that
  the box always lies inside the image. (3) Regions are sampled from the *input image* (the paper crops
  the face; the released code warps feature maps) at ``region_size`` (default ``input_size // 2``, clamped
  to 32..112 px) and encoded by one small CNN (4 × conv-BN-ReLU, 32..256 channels) shared by all regions,
  or by a timm trunk (``local="resnet18"``). (4) Fusion is feature-level: concatenation of the pooled global
  feature and the T local features, then Linear + ReLU to ``out_features`` (512), so that any of the
  project's heads sits on top; the paper combines the global and local networks' predictions instead.
  (5) The whole model trains end to end with the head's loss; no extra loss on the boxes.

``attended_regions(x)`` gives the boxes in pixels of the input, ready to draw on the face.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Backbone, register_model
from .resnet import timm_backbone
from .simple import conv_bn_relu

__all__ = ["AttentionLSTM", "LocalCNN", "ALResNet", "ALResNetOutput", "crop_regions", "boxes_to_pixels"]


# ---------------------------------------------------------------------------------------------- blocks
def boxes_to_pixels(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(..., 3)`` boxes ``(cx, cy, s)`` in normalised coordinates ([-1, 1], ``align_corners=False``
    convention, ``s`` the half-side) → ``(..., 4)`` ``(x0, y0, x1, y1)`` in pixels of an ``height × width``
    image (0 = the left/top edge of the first pixel, ``width`` = the right edge of the last)."""
    cx, cy, s = boxes.unbind(-1)
    return torch.stack([(cx - s + 1) * width / 2, (cy - s + 1) * height / 2,
                        (cx + s + 1) * width / 2, (cy + s + 1) * height / 2], dim=-1)


def crop_regions(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Spatial-transformer crop: ``images`` ``(B, C, H, W)``, ``boxes`` ``(B, T, 3)`` normalised
    ``(cx, cy, s)`` → ``(B·T, C, size, size)`` bilinear samples, differentiable w.r.t. the boxes (and images).
    Region ``b·T + t`` is box ``t`` of image ``b``."""
    B, T, _ = boxes.shape
    cx, cy, s = boxes.reshape(B * T, 1, 3).unbind(-1)  # (B·T, 1) each
    # What F.affine_grid makes of the transform [[s, 0, cx], [0, s, cy]], written out: a box has no rotation,
    # so the grid is the output pixel centres scaled and shifted (and this exports to ONNX opset 17, which
    # has no affine_grid).
    base = (torch.arange(size, device=boxes.device, dtype=boxes.dtype) * 2 + 1) / size - 1  # (size,)
    gx, gy = s * base + cx, s * base + cy  # (B·T, size)
    grid = torch.stack([gx.unsqueeze(1).expand(-1, size, -1), gy.unsqueeze(2).expand(-1, -1, size)], dim=-1)
    return F.grid_sample(images.repeat_interleave(T, dim=0), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


class AttentionLSTM(nn.Module):
    """``steps`` glimpses at a feature map. ``(B, C, h, w)`` → boxes ``(B, T, 3)`` normalised
    ``(cx, cy, s)`` and attention weights ``(B, T, h, w)`` (each map sums to 1).

    Step t: ``α_t = softmax(wᵀ tanh(W_v V + W_h h_{t-1}))`` over the ``h·w`` positions;
    ``z_t = Σ α_t V``; ``h_t, c_t = LSTMCell([z_t, box_{t-1}], (h_{t-1}, c_t-1))``;
    ``box_t`` from ``h_t`` and the attention centroid ``Σ α_t · position`` (see the module docstring).
    """

    def __init__(self, in_channels: int, hidden: int = 256, attn_dim: int = 256, steps: int = 3,
                 min_scale: float = 0.25, max_scale: float = 0.6,
                 centre_priors: list[tuple[float, float]] | None = None) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not 0.0 < min_scale < max_scale <= 1.0:
            raise ValueError(f"need 0 < min_scale < max_scale <= 1, got {min_scale}, {max_scale}")
        self.steps, self.min_scale, self.max_scale = steps, min_scale, max_scale
        self.key = nn.Conv2d(in_channels, attn_dim, 1)
        self.query = nn.Linear(hidden, attn_dim, bias=False)
        self.score = nn.Linear(attn_dim, 1)
        self.init_h = nn.Linear(in_channels, hidden)
        self.init_c = nn.Linear(in_channels, hidden)
        self.cell = nn.LSTMCell(in_channels + 3, hidden)
        self.box = nn.Linear(hidden, 3)  # (offset x, offset y, scale logit)
        # Like a spatial transformer's localisation layer: start from a fixed transform (here: box centred
        # on the attention centroid, mid scale), and let the loss move it.
        nn.init.zeros_(self.box.weight)
        nn.init.zeros_(self.box.bias)
        # ``centre_priors``: one learned (x, y) offset per step, started at these points, so that the steps
        # look at different places from the start (without them all start on the attention centroid and
        # only the attention's dependence on the LSTM state can tell them apart).
        self.centre_priors = None
        if centre_priors is not None:
            if len(centre_priors) != steps:
                raise ValueError(f"centre_priors needs one (x, y) per step ({steps}), got {len(centre_priors)}")
            self.centre_priors = nn.Parameter(torch.tensor(centre_priors, dtype=torch.float32))

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, C, h, w = fmap.shape
        values = fmap.flatten(2).transpose(1, 2)  # (B, N, C), N = h·w
        keys = self.key(fmap).flatten(2).transpose(1, 2)  # (B, N, A)
        # centres of the feature-map cells in [-1, 1] (x, y), in the flatten order of ``values``: (N, 2)
        ys = (torch.arange(h, device=fmap.device, dtype=fmap.dtype) * 2 + 1) / h - 1
        xs = (torch.arange(w, device=fmap.device, dtype=fmap.dtype) * 2 + 1) / w - 1
        positions = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2)
        mean = values.mean(dim=1)
        hid, cell = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        prev = fmap.new_zeros(B, 3)
        boxes, maps = [], []
        for step in range(self.steps):
            scores = self.score(torch.tanh(keys + self.query(hid).unsqueeze(1))).squeeze(-1)  # (B, N)
            alpha = scores.softmax(dim=1)
            glimpse = torch.bmm(alpha.unsqueeze(1), values).squeeze(1)  # (B, C)
            hid, cell = self.cell(torch.cat([glimpse, prev], dim=1), (hid, cell))
            raw = self.box(hid)
            offset = raw[:, :2] if self.centre_priors is None else raw[:, :2] + self.centre_priors[step]
            s = self.min_scale + (self.max_scale - self.min_scale) * torch.sigmoid(raw[:, 2])  # (B,)
            room = (1 - s).unsqueeze(1)  # the centre may move ±(1 - s) and keep the box inside [-1, 1]
            centre = room * torch.tanh((alpha @ positions + offset) / room)  # (B, 2)
            prev = torch.cat([centre, s.unsqueeze(1)], dim=1)
            boxes.append(prev)
            maps.append(alpha.reshape(B, h, w))
        return torch.stack(boxes, dim=1), torch.stack(maps, dim=1)


class LocalCNN(nn.Module):
    """The local network: ``(N, 3, R, R)`` regions → ``(N, channels[-1])``, 4 × (conv3x3-BN-ReLU, then a
    2× max-pool between stages), global average pool."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate(channels):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers.append(conv_bn_relu(cin, cout))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


# ---------------------------------------------------------------------------------------------- model
@dataclass
class ALResNetOutput:
    """``features`` ``(B, F)``; ``boxes`` ``(B, T, 4)`` ``(x0, y0, x1, y1)`` in input pixels;
    ``attention`` ``(B, T, h, w)`` soft-attention weights over the trunk's feature map."""

    features: torch.Tensor
    boxes: torch.Tensor
    attention: torch.Tensor


class ALResNet(nn.Module):
    """``(B, 3, H, W)`` → ``(B, out_features)``: global ResNet trunk + attention LSTM + shared local
    network on ``steps`` differentiably cropped regions, fused. See the module docstring for the design.

    ``trunk``: any timm CNN whose ``forward_features`` gives a ``(B, C, h, w)`` map (``resnetv2_50``,
    ``resnet18``, ``resnet34``...). ``local``: ``"cnn"`` (:class:`LocalCNN`) or a timm model name.
    """

    def __init__(self, trunk: str | nn.Module = "resnetv2_50", input_size: int = 224, steps: int = 3,
                 hidden: int = 256, region_size: int | None = None, local: str | nn.Module = "cnn",
                 out_features: int = 512, min_scale: float = 0.25, max_scale: float = 0.6,
                 pretrained: bool = False) -> None:
        super().__init__()
        # A module trunk (a registered backbone such as MobileNetV2Features) brings its own weights; it
        # must have ``forward_features(x) -> (B, C, h, w)`` and ``num_features``, like timm's models.
        self.trunk = timm_backbone(trunk, pretrained).module if isinstance(trunk, str) else trunk
        channels = self.trunk.num_features
        self.attention = AttentionLSTM(channels, hidden=hidden, attn_dim=hidden, steps=steps,
                                       min_scale=min_scale, max_scale=max_scale)
        self.region_size = region_size or min(112, max(32, input_size // 2))
        if isinstance(local, nn.Module):
            self.local_net, local_features = local, local.num_features
        elif local == "cnn":
            self.local_net = LocalCNN()
            local_features = self.local_net.num_features
        else:
            backbone = timm_backbone(local, pretrained)
            self.local_net, local_features = backbone.module, backbone.num_features
        self.fuse = nn.Sequential(nn.Linear(channels + steps * local_features, out_features),
                                  nn.ReLU(inplace=True))
        self.steps = steps
        self.num_features = out_features

    def _locate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fmap = self.trunk.forward_features(x)  # (B, C, h, w)
        boxes, attention = self.attention(fmap)
        return fmap, boxes, attention

    def forward_details(self, x: torch.Tensor) -> ALResNetOutput:
        """Features, boxes (pixels) and attention maps in one pass."""
        fmap, boxes, attention = self._locate(x)
        regions = crop_regions(x, boxes, self.region_size)  # (B·T, 3, R, R)
        local = self.local_net(regions).reshape(x.shape[0], -1)  # (B, T·L), region order kept
        features = self.fuse(torch.cat([fmap.mean(dim=(2, 3)), local], dim=1))
        return ALResNetOutput(features, boxes_to_pixels(boxes, x.shape[2], x.shape[3]), attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_details(x).features

    def attended_regions(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → ``(B, T, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels of ``x``, one per LSTM step
        (the local network is not run)."""
        _, boxes, _ = self._locate(x)
        return boxes_to_pixels(boxes, x.shape[2], x.shape[3])


# ---------------------------------------------------------------------------------------------- builders
@register_model("alresnet", default_input_size=224, normalization="imagenet", min_input_size=32,
                description="AL-ResNet: ResNet50V2 trunk (timm) + attention LSTM, 3 regions, local CNN (own)")
def alresnet(input_size: int, pretrained: bool = False, trunk: str = "resnetv2_50", **kwargs) -> Backbone:
    """AL-ResNet with the study's ResNet50V2 trunk; ``pretrained=True`` takes timm's trunk weights."""
    module = ALResNet(trunk=trunk, input_size=input_size, pretrained=pretrained, **kwargs)
    return Backbone(module, module.num_features)


@register_model("alresnet18", default_input_size=128, normalization="imagenet", min_input_size=32,
                description="AL-ResNet with a ResNet-18 trunk (timm): CPU-trainable, 128 px by default (own)")
def alresnet18(input_size: int, pretrained: bool = False, trunk: str = "resnet18", **kwargs) -> Backbone:
    """AL-ResNet with a ResNet-18 trunk."""
    module = ALResNet(trunk=trunk, input_size=input_size, pretrained=pretrained, **kwargs)
    return Backbone(module, module.num_features)


# AL models on the project's pretrained backbones (offline ImageNet weights): the study's question — does
# the attention-LSTM local branch beat the same trunk alone? — asked where transfer works. The local
# network is a second copy of the same pretrained family (``local="same"``, default), or the small
# from-scratch LocalCNN (``local="cnn"``).
def _family_parts(family: str) -> tuple[Callable[[bool], nn.Module], Callable[[], Path | None]]:
    """``(trunk builder taking pretrained, offline weights locator)`` of a pretrained family."""
    from .efficientnet import efficientnet_lite_features, offline_lite_weights
    from .mobilenet import mobilenet_v2_features, offline_imagenet_weights

    if family == "mobilenet_v2":
        return mobilenet_v2_features, offline_imagenet_weights
    variant = int(family.removeprefix("efficientnet_lite"))
    return (lambda pretrained: efficientnet_lite_features(variant, pretrained)), (lambda: offline_lite_weights(variant))


def _register_al(family: str, default_size: int) -> None:
    make_trunk, offline_weights = _family_parts(family)

    @register_model(f"al_{family}", default_input_size=default_size, offline_weights=offline_weights,
                    normalization="inception" if family.startswith("efficientnet") else "imagenet",
                    min_input_size=64,
                    description=f"AL model on a pretrained {family} trunk + attention LSTM, 3 regions, "
                                f"{family} local net (own)")
    def builder(input_size: int, pretrained: bool = False, local: str = "same", **kwargs) -> Backbone:
        local_net = make_trunk(pretrained) if local == "same" else local
        module = ALResNet(trunk=make_trunk(pretrained), input_size=input_size, local=local_net,
                          pretrained=pretrained, **kwargs)
        return Backbone(module, module.num_features)


for _family, _size in (("mobilenet_v2", 112), ("efficientnet_lite0", 112), ("efficientnet_lite2", 260)):
    _register_al(_family, _size)
