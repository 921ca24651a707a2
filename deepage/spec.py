"""A model's :class:`ModelSpec`: everything needed to rebuild it and to read its answers, as plain data.

It lives apart from the registry (:mod:`deepage.models.registry`, which re-exports it) because it imports no
torch: an ONNX graph's spec (:mod:`deepage.inference.onnx_graph`) is read without loading PyTorch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .preprocessing import Preprocessing

__all__ = ["ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model (stored in checkpoints as plain data)."""

    name: str
    head: str = "dex"
    scheme: str | None = None  # label scheme of a ``classes`` head
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    model_kwargs: dict = field(default_factory=dict)
    head_kwargs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        d = dict(d)
        d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
        return cls(**d)
