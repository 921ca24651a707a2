"""Gender and race as extra training targets (``aux_weight`` in the config).

UTKFace labels every face with a gender and a race as well as an age: free signal for the shared trunk.
The heads exist only while training (the saved model answers age alone, so every checkpoint reader stays as
it is); ``last.pt`` keeps their weights under ``aux_state`` so that a run resumes exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.loader import FaceData
from ..models.registry import AgeModel

__all__ = ["AuxHeads", "MultiTaskModel", "aux_labels", "aux_loss", "NUM_GENDERS", "NUM_RACES"]

NUM_GENDERS = 2  # UTKFace: 0 male, 1 female
NUM_RACES = 5  # UTKFace: 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others


class AuxHeads(nn.Module):
    """``(B, F)`` trunk features → ``(B, 2 + 5)`` logits: gender then race."""

    def __init__(self, num_features: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features, NUM_GENDERS + NUM_RACES)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


class MultiTaskModel(nn.Module):
    """The age model and the extra heads in one forward (what DistributedDataParallel wraps):
    ``(B, 3, H, W)`` → ``(age head outputs (B, K), aux logits (B, 7))`` from one pass through the trunk."""

    def __init__(self, model: AgeModel, aux: AuxHeads) -> None:
        super().__init__()
        self.model, self.aux = model, aux

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        return self.model.head(features), self.aux(features)


def aux_labels(data: FaceData) -> torch.Tensor:
    """``(N, 2)`` int64: gender and race of each image (-1 where unknown)."""
    return torch.stack([data.gender, data.race], dim=1)


def aux_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gender plus race cross-entropy of ``logits`` ``(B, 7)`` against ``labels`` ``(B, 2)``; unknown labels
    (-1) count for nothing, and a batch without any known label adds 0 (not NaN)."""
    logits = logits.float()
    total = logits.new_zeros(())
    for part, target in ((logits[:, :NUM_GENDERS], labels[:, 0]), (logits[:, NUM_GENDERS:], labels[:, 1])):
        known = target >= 0
        if known.any():
            total = total + F.cross_entropy(part[known], target[known])
    return total
