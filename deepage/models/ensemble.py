"""An ensemble of trained DEX models as one model: their age distributions averaged.

Each member keeps its own preprocessing. The ensemble takes the input of its *first* member (its
:class:`~deepage.preprocessing.Preprocessing` is the ensemble's, so prediction cuts and resizes faces
once) and derives every other member's input from it inside the graph: the central part of the image that
member's crop covers, resized bilinearly to its input size, and renormalised. So a member's crop must lie
inside the first member's (``crop_pct`` no larger). Members trained at another stored size see the same
part of the face through a slightly different resampling chain; ``deepage ensemble`` scores the result on
validation, so what ships is what was measured.

The output is ``log`` of the averaged distribution over ages 0-100 ``(B, 101)``: a DEX head's ``predict``
(softmax, then the age estimate and the class masses) turns it into exactly that distribution, so the
ensemble answers, exports to ONNX and calibrates like any DEX model.

An ensemble is a combination of registered models, not a backbone to train, so it is built from its spec
by :func:`deepage.models.registry.build_from_spec` under the name :data:`ENSEMBLE` rather than listed by
``list_models``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..labels import AGE_BINS
from ..preprocessing import NORMALIZATIONS, Preprocessing
from .heads import ANSWER_OPTIONS, DexHead
from .registry import AgeModel, Backbone, ModelSpec
from .resize import antialiased_resize_matrix

__all__ = ["ENSEMBLE", "EnsembleModel", "MemberInput", "ensemble_spec", "build_ensemble_checkpoint",
           "unpack_ensemble_checkpoint"]

ENSEMBLE = "ensemble"


def _normalisation(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` as ``(1, 3, 1, 1)`` tensors on [0, 1] pixel values (``"unit"``: 0 and 1)."""
    stats = NORMALIZATIONS[name]
    mean, std = stats if stats is not None else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


class MemberInput(nn.Module):
    """The ensemble's input ``(B, 3, S, S)`` (preprocessed by ``outer``) → a member's ``(B, 3, s, s)``
    (as ``inner`` would have preprocessed the same face): the central ``inner.crop_pct / outer.crop_pct`` of
    the image, resized to ``inner.input_size`` (bilinear; ``antialias``: with torch's antialiased weights,
    as a matrix ``R x Rᵀ`` so that it exports to ONNX), renormalised."""

    def __init__(self, outer: Preprocessing, inner: Preprocessing, antialias: bool = False) -> None:
        super().__init__()
        if inner.crop_pct > outer.crop_pct + 1e-9:
            raise ValueError(f"an ensemble member with crop_pct {inner.crop_pct} sees more of the face than the "
                             f"first member ({outer.crop_pct}), whose input the ensemble takes: put the member "
                             "with the widest crop first")
        side = outer.input_size * inner.crop_pct / outer.crop_pct
        self.side = round(side)
        self.offset = (outer.input_size - self.side) // 2
        self.size = inner.input_size
        mean_o, std_o = _normalisation(outer.normalization)
        mean_i, std_i = _normalisation(inner.normalization)
        # inner = (outer * std_o + mean_o - mean_i) / std_i: one affine map per channel
        self.register_buffer("scale", std_o / std_i, persistent=False)
        self.register_buffer("shift", (mean_o - mean_i) / std_i, persistent=False)
        self.identity = (self.side == outer.input_size and self.size == outer.input_size
                         and outer.normalization == inner.normalization)
        matrix = antialiased_resize_matrix(self.side, self.size) if antialias and self.size != self.side else None
        self.register_buffer("resize_matrix", matrix, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        if self.side != x.shape[-1]:
            x = x[:, :, self.offset:self.offset + self.side, self.offset:self.offset + self.side]
        if self.resize_matrix is not None:
            x = self.resize_matrix @ x @ self.resize_matrix.T
        elif self.size != self.side:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x * self.scale + self.shift


class EnsembleModel(AgeModel):
    """``(B, 3, S, S)`` (the first member's input) → ``(B, 101)``: log of the members' mean age distribution.

    ``spec.model_kwargs["members"]``: the members' :class:`ModelSpec` dicts (DEX heads only);
    ``spec.model_kwargs["antialias"]`` (default False, the ensembles made before it): how the members' inputs
    are resized from the first's (:class:`MemberInput`)."""

    def __init__(self, spec: ModelSpec) -> None:
        from .registry import build_from_spec

        member_specs = [ModelSpec.from_dict(d) for d in spec.model_kwargs.get("members", [])]
        if len(member_specs) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(member_specs)}")
        for k, m in enumerate(member_specs):
            if m.head != "dex" or m.name == ENSEMBLE:
                raise ValueError(f"ensemble member {k} ({m.name}, head {m.head!r}): members must be single models "
                                 "with a 'dex' head (an age distribution to average)")
        if spec.preprocessing != member_specs[0].preprocessing:
            raise ValueError("an ensemble's preprocessing must be its first member's")
        # how to answer (estimate, temperature) is the ensemble's; how to train is each member's
        head = DexHead(AGE_BINS, **{k: v for k, v in spec.head_kwargs.items() if k in ANSWER_OPTIONS})
        head.fc = nn.Identity()  # the input is already log-probabilities: softmax gives them back
        super().__init__(spec, Backbone(nn.Identity(), AGE_BINS), head)
        self.members = nn.ModuleList(build_from_spec(m) for m in member_specs)
        antialias = bool(spec.model_kwargs.get("antialias", False))
        self.inputs = nn.ModuleList(MemberInput(spec.preprocessing, m.preprocessing, antialias) for m in member_specs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` → ``(B, 101)``: the log mean distribution (an ensemble has no shared features)."""
        logs = [member(adapt(x)).float().log_softmax(dim=1) for member, adapt in zip(self.members, self.inputs,
                                                                                     strict=True)]
        return torch.logsumexp(torch.stack(logs), dim=0) - math.log(len(logs))


def ensemble_spec(members: list[ModelSpec], antialias: bool = False) -> ModelSpec:
    """The spec of an ensemble of ``members`` (the first one's preprocessing)."""
    kwargs: dict = {"members": [m.to_dict() for m in members]}
    if antialias:
        kwargs["antialias"] = True
    return ModelSpec(name=ENSEMBLE, head="dex", preprocessing=members[0].preprocessing, model_kwargs=kwargs)


def build_ensemble_checkpoint(checkpoints: list, output, data=None, split: str = "val",
                              weights: str = "float16", batch_size: int = 128, antialias: bool = False) -> dict:
    """Write one checkpoint holding the DEX models ``checkpoints`` (paths, in order: the first one's input is
    the ensemble's) as an :class:`EnsembleModel`, and return it.

    The members must share a split fingerprint (an ensemble of models that saw different training images
    could not be scored fairly). ``data``: an ingested HDF5 whose ``split`` (default validation) the
    ensemble is scored on, through its own single-input path; those numbers become the checkpoint's
    ``metrics`` (without ``data`` it has none). ``weights``: how they are stored: ``float16`` (half the file of
    ``float32``), or ``int8`` (convolution and linear weights as int8 with a scale per output channel, the rest
    float16: about a quarter; :mod:`deepage.checkpoint`); they load into float32, and with ``data`` it is the
    stored weights that are scored. Age
    gates are not carried over: they belong to one model's scores (``deepage calibrate`` the result).
    ``antialias``: resize the members' inputs with antialiasing (:class:`MemberInput`)."""

    from ..checkpoint import WEIGHT_STORAGES, int8_round_trip, load_checkpoint, save_checkpoint

    if weights not in WEIGHT_STORAGES:
        raise ValueError(f"weight storage {weights!r}: choose one of {', '.join(WEIGHT_STORAGES)}")
    paths = [Path(p) for p in checkpoints]
    ckpts = [load_checkpoint(p) for p in paths]
    fingerprints = {c.get("split_fingerprint") for c in ckpts}
    if len(fingerprints) != 1:
        shown = ", ".join(f"{p.name}: {c.get('split_fingerprint')}" for p, c in zip(paths, ckpts, strict=True))
        raise ValueError(f"ensemble members were trained on different splits ({shown}); use members of one split")
    specs = [ModelSpec.from_dict(c["spec"]) for c in ckpts]
    spec = ensemble_spec(specs, antialias=antialias)
    model = EnsembleModel(spec)
    for member, ckpt, path in zip(model.members, ckpts, paths, strict=True):
        try:
            member.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise ValueError(f"{path}: its weights do not fit its own spec ({str(exc).splitlines()[0]})") from None
    state = model.state_dict()
    if weights == "float16":
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {"spec": spec.to_dict(), "state_dict": state, "split_fingerprint": fingerprints.pop(),
               "metrics": {}, "members": [{"checkpoint": str(p), "metrics": c.get("metrics") or {}}
                                          for p, c in zip(paths, ckpts, strict=True)]}
    if weights == "int8":  # save_checkpoint packs them
        payload["weight_storage"] = "int8"
        state = int8_round_trip(state)
    if data is not None:
        from ..data.loader import FaceBatches, load_split
        from ..evaluation.metrics import core_metrics
        from ..evaluation.predictions import collect_predictions

        model.load_state_dict(state)  # score the weights as stored (float16 or int8 ones)
        face_data = load_split(data, split)
        batches = FaceBatches(face_data, spec.preprocessing, batch_size)
        payload["metrics"] = core_metrics(collect_predictions(model.eval(), batches))
        payload["metrics_split"] = split
    save_checkpoint(output, payload)
    return payload


def unpack_ensemble_checkpoint(path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write each member of the ensemble checkpoint ``path`` as a checkpoint of its own,
    ``out_dir/member{k}.pt`` (float32 weights, its spec, the ensemble's split fingerprint and the member's
    recorded metrics), and return their paths: a fresh machine regains the shipped members (to fine-tune,
    distil from or re-ensemble) from the one file that is committed."""
    from ..checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(path)
    spec = ModelSpec.from_dict(ckpt["spec"])
    if spec.name != ENSEMBLE:
        raise ValueError(f"{path}: model {spec.name!r} is not an ensemble; nothing to unpack")
    members = spec.model_kwargs["members"]
    recorded = ckpt.get("members") or [{} for _ in members]
    out, written = Path(out_dir), []
    for k, member in enumerate(members):
        prefix = f"members.{k}."
        state = {key[len(prefix):]: value.float() if value.is_floating_point() else value
                 for key, value in ckpt["state_dict"].items() if key.startswith(prefix)}
        target = out / f"member{k}.pt"
        save_checkpoint(target, {"spec": member, "state_dict": state,
                                 "split_fingerprint": ckpt.get("split_fingerprint"),
                                 "metrics": recorded[k].get("metrics") or {},
                                 "unpacked_from": {"checkpoint": str(path), "member": k,
                                                   "trained_as": recorded[k].get("checkpoint")}})
        written.append(target)
    return written
