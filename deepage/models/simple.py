"""The study's baseline networks, trained from scratch on ``/255`` inputs ("unit" normalisation).

============  =====================================================================  ==================
name          architecture                                                            features ``F``
============  =====================================================================  ==================
``softmax``   no hidden layer: the pixels themselves (the head makes it a softmax      ``3 * S * S``
              regression on pixels)
``dnn``       MLP on the flattened pixels: Linear-ReLU-Dropout × 2                   256
``cnn``       plain conv net: 4 × (conv3x3-BN-ReLU-maxpool), global average pool     256
``rnn``       LSTM (or GRU) reading the image row by row: a sequence of ``S`` rows   2 × 128
              of ``3 * S`` values; last hidden state and mean over rows
============  =====================================================================  ==================

``S`` is the input side the model is built for (``input_size``). ``softmax``, ``dnn`` and ``rnn`` see
pixel positions directly, so they only accept that side (a clear error says so otherwise); ``cnn`` takes
any side ≥ 16.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .registry import Backbone, register_model

__all__ = ["PixelFeatures", "MLPFeatures", "PlainCNN", "RowRNN", "no_pretrained_weights"]


def no_pretrained_weights(name: str, pretrained: bool) -> None:
    """Models the study trains from scratch have no library weights: ``pretrained=True`` is an error."""
    if pretrained:
        raise ValueError(f"model {name!r} has no pretrained weights (it is trained from scratch); drop "
                         "pretrained=True, or pass weights=PATH to a file saved from this backbone")


def _check_side(x: torch.Tensor, side: int, model: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != side or x.shape[3] != side:
        raise ValueError(f"{model} was built for (B, 3, {side}, {side}) inputs, got {tuple(x.shape)}; "
                         f"rebuild it with input_size={x.shape[-1]}")


# ---------------------------------------------------------------------------------------------- blocks
def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → ReLU, 'same' padding for odd kernels."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


# ---------------------------------------------------------------------------------------------- models
class PixelFeatures(nn.Module):
    """``(B, 3, S, S)`` → ``(B, 3·S·S)``: the flattened pixels. With a linear head on top this is the
    study's softmax classifier (multinomial logistic regression on pixels)."""

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.num_features = 3 * input_size * input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_side(x, self.input_size, "softmax")
        return x.flatten(1)


class MLPFeatures(nn.Module):
    """``(B, 3, S, S)`` → ``(B, hidden[-1])``: a fully connected network on the flattened pixels."""

    def __init__(self, input_size: int, hidden: tuple[int, ...] = (512, 256), dropout: float = 0.3) -> None:
        super().__init__()
        self.input_size = input_size
        layers: list[nn.Module] = []
        width = 3 * input_size * input_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.num_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_side(x, self.input_size, "dnn")
        return self.mlp(x.flatten(1))


class PlainCNN(nn.Module):
    """``(B, 3, H, W)`` → ``(B, channels[-1])``: conv3x3-BN-ReLU-maxpool per stage, then a global average
    pool, so any ``H, W ≥ 2**len(channels)`` works."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        stages, cin = [], 3
        for cout in channels:
            stages += [conv_bn_relu(cin, cout), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*stages)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class RowRNN(nn.Module):
    """``(B, 3, S, S)`` → ``(B, 2·hidden)``: a recurrent net reading the image as a sequence of ``S`` rows,
    each row a vector of its ``3·S`` values (channels of a pixel side by side). Features: the last hidden
    state of the top layer, concatenated with its mean over all rows (the last state alone forgets the
    top of the face)."""

    def __init__(self, input_size: int, hidden: int = 128, layers: int = 2, cell: str = "lstm",
                 dropout: float = 0.1) -> None:
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"rnn cell must be 'lstm' or 'gru', got {cell!r}")
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.input_size = input_size
        self.norm = nn.LayerNorm(3 * input_size)
        self.rnn = rnn_cls(3 * input_size, hidden, num_layers=layers, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.num_features = 2 * hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_side(x, self.input_size, "rnn")
        rows = x.permute(0, 2, 1, 3).flatten(2)  # (B, S rows, 3·S): row r = [R row r, G row r, B row r]
        out, _ = self.rnn(self.norm(rows))  # (B, S, hidden)
        return torch.cat([out[:, -1], out.mean(dim=1)], dim=1)


# ---------------------------------------------------------------------------------------------- builders
@register_model("softmax", default_input_size=64, normalization="unit", min_input_size=8,
                description="softmax classifier: a linear layer on the raw pixels (own)")
def softmax(input_size: int, pretrained: bool = False) -> Backbone:
    """Softmax regression on pixels (no pretrained weights exist)."""
    no_pretrained_weights("softmax", pretrained)
    module = PixelFeatures(input_size)
    return Backbone(module, module.num_features)


@register_model("dnn", default_input_size=64, normalization="unit", min_input_size=8,
                description="DNN: a 2-hidden-layer MLP (512, 256) on the raw pixels (own)")
def dnn(input_size: int, pretrained: bool = False, hidden: tuple[int, ...] = (512, 256),
        dropout: float = 0.3) -> Backbone:
    """Fully connected network on pixels."""
    no_pretrained_weights("dnn", pretrained)
    module = MLPFeatures(input_size, tuple(hidden), dropout)
    return Backbone(module, module.num_features)


@register_model("cnn", default_input_size=64, normalization="unit", min_input_size=16,
                description="CNN: 4 x (conv3x3-BN-ReLU-maxpool) 32-64-128-256, global average pool (own)")
def cnn(input_size: int, pretrained: bool = False,
        channels: tuple[int, ...] = (32, 64, 128, 256)) -> Backbone:
    """Plain convolutional network."""
    no_pretrained_weights("cnn", pretrained)
    module = PlainCNN(tuple(channels))
    return Backbone(module, module.num_features)


@register_model("rnn", default_input_size=64, normalization="unit", min_input_size=8,
                description="RNN: a 2-layer LSTM (or GRU, cell='gru') reading image rows as a sequence (own)")
def rnn(input_size: int, pretrained: bool = False, hidden: int = 128, layers: int = 2,
        cell: str = "lstm") -> Backbone:
    """Recurrent network over image rows."""
    no_pretrained_weights("rnn", pretrained)
    module = RowRNN(input_size, hidden, layers, cell)
    return Backbone(module, module.num_features)
