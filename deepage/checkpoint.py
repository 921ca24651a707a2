"""Self-describing checkpoints: plain data that loads with ``torch.load(..., weights_only=True)``.

Contents: ``format``, ``spec`` (model name, arguments, head, label scheme, preprocessing), ``state_dict``,
``split_fingerprint``, ``metrics``, ``versions``, for resumable ones the training state (``optimizer``,
``step``, ``epoch``, ``rng``, ...), and once ``deepage calibrate`` has run, ``age_gates``: adult age (as a
string) → an :class:`~deepage.answers.AgeGate` dict. Written atomically: temp file, fsync, rename.

``weight_storage: "int8"`` (an ensemble that must fit a size limit, ``deepage ensemble --weights int8``): every
convolution and linear weight is written as int8 with one float32 scale per output channel
(:data:`INT8_SCALES_KEY`), the other tensors as float16; :func:`load_checkpoint` hands back float32 weights,
and writing such a checkpoint again (``deepage calibrate``) keeps the same scales, so its bytes and its
:func:`weights_digest` do not drift.

The module imports torch only in the functions that need it, so :func:`read_age_gates` serves an ONNX
graph's record without loading PyTorch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .answers import AgeGate
from .spec import ModelSpec

if TYPE_CHECKING:
    import torch

    from .models.registry import AgeModel

__all__ = ["save_checkpoint", "load_checkpoint", "model_from_checkpoint", "versions", "FORMAT", "AGE_GATES_KEY",
           "weights_digest", "read_age_gates", "INT8_SCALES_KEY", "WEIGHT_STORAGES", "int8_round_trip"]

log = logging.getLogger(__name__)

FORMAT = "deepage-checkpoint/1"
AGE_GATES_KEY = "age_gates"
WEIGHT_STORAGES = ("float32", "float16", "int8")
"""How ``deepage ensemble --weights`` may store a checkpoint's weights."""
INT8_SCALES_KEY = "int8_weight_scales"
"""Where a ``weight_storage: "int8"`` checkpoint keeps its scales: weight name → ``(out_channels,)`` float32."""


def _is_packed(name: str, tensor: torch.Tensor) -> bool:
    """Convolution and linear weights (``(out, in, ...)``, two or more dimensions) are stored as int8."""
    return tensor.is_floating_point() and tensor.dim() >= 2 and name.endswith("weight")


def _channel_view(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return scale.reshape(-1, *([1] * (like.dim() - 1)))


def int8_per_channel(weight: torch.Tensor, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: ``weight`` (``(out, ...)``, float) as int8 with one float32 scale per output channel,
    symmetric (``weight ≈ q · scale``, ``|q| ≤ 127``, ``scale = max |w| / 127`` of its channel). The one int8
    rule of the project: checkpoints (``deepage ensemble --weights int8``) and ONNX graphs (``deepage export
    --weights int8``) store weights by it, so a checkpoint's int8 weights pass into a graph unchanged.
    ``scale``: one to keep (a checkpoint written again: ``q`` then comes back exactly)."""
    import torch

    w = weight.detach().float()
    if scale is None:
        absmax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
        scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    return (w / _channel_view(scale, w)).round().clamp(-127, 127).to(torch.int8), scale.float()


def _pack_int8(state: dict, scales: dict | None = None) -> tuple[dict, dict]:
    """``state`` with its conv/linear weights as int8 (symmetric, per output channel: ``w ≈ q · scale``,
    ``|q| ≤ 127``) and its other float tensors as float16, and the scales. ``scales``: those to reuse (a
    checkpoint loaded and written again: ``q`` then comes back exactly); a weight that no longer fits its
    given scale (changed since) gets a new one."""
    packed, out = {}, {}
    for name, value in state.items():
        if not _is_packed(name, value):
            packed[name] = value.half() if value.is_floating_point() else value
            continue
        w = value.detach().float()
        absmax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
        scale = (scales or {}).get(name)
        if scale is None or tuple(scale.shape) != (w.shape[0],) or bool((absmax > 127.5 * scale).any()):
            scale = None
        packed[name], out[name] = int8_per_channel(w, scale)
    return packed, out


def _unpack_int8(state: dict, scales: dict, source: str | Path) -> dict:
    import torch

    if not isinstance(scales, dict):
        raise ValueError(f"{source}: its {INT8_SCALES_KEY!r} is not a table of scales")
    unpacked = dict(state)
    for name, scale in scales.items():
        q = state.get(name)
        if q is None or not isinstance(scale, torch.Tensor) or q.dtype != torch.int8 or scale.numel() != q.shape[0]:
            raise ValueError(f"{source}: int8 weight {name!r} and its scale do not match (weight "
                             f"{None if q is None else (q.dtype, tuple(q.shape))}, scale "
                             f"{tuple(scale.shape) if isinstance(scale, torch.Tensor) else type(scale).__name__})")
        unpacked[name] = q.float() * _channel_view(scale.float(), q)
    return unpacked


def int8_round_trip(state: dict) -> dict:
    """The weights a ``weight_storage: "int8"`` checkpoint of ``state`` loads back as (to score them)."""
    packed, scales = _pack_int8(state)
    return _unpack_int8(packed, scales, "int8_round_trip")


def versions() -> dict:
    import timm
    import torch

    return {"deepage": __version__, "torch": str(torch.__version__), "timm": str(timm.__version__),
            "python": platform.python_version()}


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` (plus format and versions) atomically to ``path``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "versions": versions(), **payload}
    if payload.get("weight_storage") == "int8":
        payload["state_dict"], payload[INT8_SCALES_KEY] = _pack_int8(payload["state_dict"],
                                                                     payload.get(INT8_SCALES_KEY))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint without executing code; a clear error for anything that is not one."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and unpickler errors alike
        raise ValueError(f"{path} is not a readable DeepAge checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "spec" not in ckpt:
        raise ValueError(f"{path} is not a DeepAge checkpoint (no {FORMAT!r} format tag)")
    try:
        ModelSpec.from_dict(ckpt["spec"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"no {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{path}: its model spec is incomplete or invalid ({detail})") from exc
    if not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path}: the checkpoint holds no weights ('state_dict')")
    if INT8_SCALES_KEY in ckpt:  # the scales stay: writing the checkpoint again reuses them
        ckpt["state_dict"] = _unpack_int8(ckpt["state_dict"], ckpt[INT8_SCALES_KEY], path)
    return ckpt


def _weights_mismatch(expected: dict, given: dict, shown: int = 3) -> str:
    """What differs between a model's ``state_dict`` and a checkpoint's, naming at most ``shown`` keys of each
    kind (a whole list ran to 11,000 characters)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [f"{k} {tuple(given[k].shape)} for {tuple(expected[k].shape)}" for k in expected
                if k in given and hasattr(given[k], "shape") and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)):
        if keys:
            more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {what} ({', '.join(keys[:shown])}{more})")
    return "; ".join(parts)


def model_from_checkpoint(path_or_ckpt: str | Path | dict, name: str | Path | None = None) -> AgeModel:
    """Rebuild the model a checkpoint describes and load its weights; returned in eval mode. Weights that do
    not fit the model raise ``ValueError`` naming ``name`` (the path when one is given) and a few keys."""
    from .models.registry import build_from_spec

    ckpt = path_or_ckpt if isinstance(path_or_ckpt, dict) else load_checkpoint(path_or_ckpt)
    name = name or (path_or_ckpt if not isinstance(path_or_ckpt, dict) else "checkpoint")
    model = build_from_spec(ModelSpec.from_dict(ckpt["spec"]), pretrained=False)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:  # torch lists every key: one line naming a few instead
        mismatch = _weights_mismatch(model.state_dict(), ckpt["state_dict"]) or str(exc).splitlines()[0]
        raise ValueError(f"{name}: the weights do not fit model {model.spec.name!r}: {mismatch}") from None
    return model.eval()


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """16 hex digits of SHA-256 over a state dict's names, dtypes, shapes and values: ties an operating
    point (:class:`~deepage.answers.AgeGate`) to the weights it was chosen for."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def read_age_gates(ckpt: dict, source: str | Path = "checkpoint") -> dict[int, AgeGate]:
    """The operating points stored in ``ckpt`` (adult age → :class:`AgeGate`). One chosen for other
    weights (the file was retrained or edited since ``deepage calibrate``) is left out, with a warning."""
    stored = ckpt.get(AGE_GATES_KEY) or {}
    if not stored:
        return {}
    if not isinstance(stored, dict):
        raise ValueError(f"{source}: its {AGE_GATES_KEY!r} is not a table of operating points")
    # an exported ONNX file's record (inference.export.onnx_model_and_record) carries the digest of the
    # weights it came from instead of the weights; None: an older file that did not store it
    digest = ckpt["weights_digest"] if "weights_digest" in ckpt else weights_digest(ckpt["state_dict"])
    gates = {}
    for age, d in stored.items():
        try:
            gate, age = AgeGate.from_dict(d), int(age)
        except (TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"{source}: its operating point for adult age {age} is malformed ({exc})") from exc
        if gate.weights and digest and gate.weights != digest:
            log.warning("%s: the operating point for adult age %s was chosen for other weights (%s, these are "
                        "%s): ignored; calibrate again", source, age, gate.weights, digest)
            continue
        gates[age] = gate
    return gates
