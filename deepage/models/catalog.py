"""The model zoo as a table (``deepage models [--json]``): name, parameter count with a dex head, default
input size, normalisation and a one-line description of every registered model."""

from __future__ import annotations

import torch

from .registry import create_model, list_models, model_info

__all__ = ["model_table", "count_parameters"]


def count_parameters(name: str, head: str = "dex", input_size: int | None = None) -> int:
    """Parameters of model ``name`` with ``head`` at ``input_size`` (default: its native size).

    The model is built on the ``meta`` device (shapes only, no memory, no initialisation cost), falling
    back to the CPU for a builder that cannot run there."""
    kwargs = {"head": head, "input_size": input_size}
    if head == "classes":
        kwargs["num_classes"] = 14
    try:
        with torch.device("meta"):
            model = create_model(name, **kwargs)
    except (NotImplementedError, RuntimeError):
        model = create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


def model_table() -> list[dict]:
    """One row per registered model: ``name``, ``parameters`` (with a dex head, at the default input
    size), ``default_input_size``, ``normalization``, ``pretrained_offline`` (ImageNet weights installed
    locally), ``description``."""
    rows = []
    for name in list_models():
        info = model_info(name)
        rows.append({"name": name, "parameters": count_parameters(name),
                     "default_input_size": info["default_input_size"], "normalization": info["normalization"],
                     "pretrained_offline": info["pretrained_offline"], "description": info["description"]})
    return rows
