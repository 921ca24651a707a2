"""Self-describing checkpoints: plain data that loads with ``torch.load(..., weights_only=True)``.

Contents: ``format``, ``spec`` (model name, arguments, head, label scheme, preprocessing), ``state_dict``,
``split_fingerprint``, ``metrics``, ``versions``, and for resumable ones the training state
(``optimizer``, ``step``, ``epoch``, ``rng``, ...). Written atomically: temp file, fsync, rename.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from . import __version__
from .models.registry import AgeModel, ModelSpec, build_from_spec

__all__ = ["save_checkpoint", "load_checkpoint", "model_from_checkpoint", "versions", "FORMAT"]

FORMAT = "deepage-checkpoint/1"


def versions() -> dict:
    import timm

    return {"deepage": __version__, "torch": str(torch.__version__), "timm": str(timm.__version__),
            "python": platform.python_version()}


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` (plus format and versions) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "versions": versions(), **payload}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint without executing code; a clear error for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and unpickler errors alike
        raise ValueError(f"{path} is not a readable DeepAge checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "spec" not in ckpt:
        raise ValueError(f"{path} is not a DeepAge checkpoint (no {FORMAT!r} format tag)")
    return ckpt


def model_from_checkpoint(path_or_ckpt: str | Path | dict) -> AgeModel:
    """Rebuild the model a checkpoint describes and load its weights; returned in eval mode."""
    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    model = build_from_spec(ModelSpec.from_dict(ckpt["spec"]), pretrained=False)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
