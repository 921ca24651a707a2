"""Frozen dataclass configs: code defaults, then a YAML file, then ``key=value`` overrides.

Unknown keys are an error (with the valid ones listed); values are converted to the field's type;
the resolved config is saved as YAML in each run folder.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["TrainConfig", "load_config", "apply_overrides", "config_to_dict", "save_config"]

T = TypeVar("T")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs. Paths are strings so the YAML stays plain."""

    # data
    data: str = ""
    train_split: str = "train"
    val_split: str = "val"
    drop_conflicting_duplicates: bool = False  # train without duplicate groups whose copies carry different ages
    # model (see deepage.models.create_model)
    model: str = "mobilenet_v2"
    head: str = "dex"  # classes | dex | coral (deepage.models.heads.HEADS)
    scheme: str | None = None  # label scheme of a `classes` head: utk14, utk8 or "0,13,20,..."
    input_size: int | None = None  # None: the model's native size
    crop_pct: float = 0.9
    normalization: str | None = None  # None: the model's default ("imagenet" or "unit")
    pretrained: bool = False
    weights: str | None = None  # local backbone weights file
    init_from: str | None = None  # a deepage checkpoint (same model and head) whose weights start this run
    model_kwargs: dict = field(default_factory=dict)
    head_kwargs: dict = field(default_factory=dict)  # the head's options, e.g. {sigma: 2.0} (head_options(head))
    # optimisation
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine | step | constant (after a linear warm-up)
    warmup_epochs: float = 0.3
    step_gamma: float = 0.1
    step_every_epochs: int = 10
    label_smoothing: float = 0.0  # classes head
    class_weights: bool = False  # classes head: inverse-frequency weights
    augment: bool = True  # the study's data_augmentation switch
    photo_augment: bool = False  # old/cheap-photo degradations (noise, grey, sepia, cast, blur, down, JPEG)
    ema_decay: float = 0.0  # 0: off; else weights are averaged (EMA) and the average is evaluated and saved
    grad_clip: float = 0.0
    # SWA (Izmailov et al. 2018): the last swa_epochs epochs hold the learning rate at swa_lr (None: lr) and the
    # weights at each of their ends are averaged equally; that average is validated and saved. Unlike EMA it
    # weighs a whole epoch's end the same as the last one; BatchNorm statistics are averaged with the weights
    swa_epochs: int = 0
    swa_lr: float | None = None
    # mixup (Zhang et al. 2018): each training batch blended with a shuffled copy of itself, x = l*x + (1-l)*x',
    # l ~ Beta(mixup_alpha, mixup_alpha), and the loss the same blend of the two labels' losses; 0: off
    mixup_alpha: float = 0.0
    # transfer: the pretrained trunk (every backbone parameter but its "neck") learns at lr * backbone_lr_mult,
    # and is frozen for the first linear_probe_epochs (the head learns on fixed features first: LP-FT)
    backbone_lr_mult: float = 1.0
    linear_probe_epochs: float = 0.0
    # distillation (dex head): the teachers' age distributions on the training images, averaged, mixed into
    # the soft label with teacher_weight (an ensemble shipped as one model)
    teachers: list = field(default_factory=list)  # deepage checkpoints (.pt) with an age distribution
    teacher_weight: float = 0.5
    # online ("consistent") distillation: the teachers see each augmented training batch, the same view the
    # student sees, instead of the un-augmented image once; every teacher must take the student's preprocessing
    teacher_online: bool = False
    # multi-task: gender and race heads on the trunk's features during training only (UTKFace labels them;
    # the saved model has no such heads); their cross-entropies, weighted by aux_weight, join the age loss
    aux_weight: float = 0.0
    # budgets and stopping
    max_minutes: float | None = None
    max_steps: int | None = None
    early_stopping_patience: int = 0  # epochs without validation improvement; 0: off
    # machine
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision (bfloat16 autocast), used on GPU only
    cpu_bf16: bool = False  # bfloat16 autocast on CPU: helps dense convs (ResNet-50 46.6 -> 79.4 img/s on an
    # avx512_bf16 CPU), slows depthwise ones (MobileNetV2 167.6 -> 154.9), so it is a per-recipe choice, off by default
    channels_last: bool = True
    # torch.compile of the training forward pass (validation and the saved weights use the plain module):
    # dlib_resnet bf16 197 -> 229 img/s, MobileNetV2 191 -> 153 (bench/train_precision.py), a per-recipe choice
    compile: bool = False
    num_threads: int | None = None
    seed: int = 0
    deterministic: bool = False
    # output
    out_dir: str = "runs"
    name: str | None = None
    eval_batch_size: int = 128
    progress: bool = True

    def __post_init__(self) -> None:
        # Model and head names come from their registries (imported here, not at module level, so that
        # reading a config costs nothing until one is built); an unknown name fails now, not at the first step.
        from .models.heads import HEADS, head_options
        from .models.registry import list_models

        choices = {"optimizer": ("adamw", "adam", "sgd"), "schedule": ("cosine", "step", "constant"),
                   "head": HEADS, "device": ("auto", "cpu", "cuda"), "model": tuple(list_models())}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"config field {key!r}: {getattr(self, key)!r} is not one of {allowed}")
        if self.head == "classes" and not self.scheme:
            raise ValueError("config: head 'classes' needs scheme (utk14, utk8 or custom edges)")
        if self.head != "classes":
            for key in ("scheme", "label_smoothing", "class_weights"):
                if getattr(self, key):
                    raise ValueError(f"config field {key!r} applies to head 'classes' only (head is {self.head!r}; "
                                     "age heads answer every scheme)")
        if self.val_split and self.val_split != "all" and self.val_split in self.train_split.split("+"):
            raise ValueError(f"config field 'val_split': {self.val_split!r} is part of train_split "
                             f"{self.train_split!r}; validating on training images picks nothing (set val_split "
                             "to '' and a fixed number of epochs)")
        unknown = sorted(set(self.head_kwargs) - set(head_options(self.head)))
        if unknown:
            raise ValueError(f"config field 'head_kwargs': head {self.head!r} has no option(s) {unknown}; "
                             f"valid: {sorted(head_options(self.head))}")
        for key in ("label_smoothing", "class_weights"):
            if key in self.head_kwargs:
                raise ValueError(f"config field 'head_kwargs': set {key!r} as its own config field")
        if not isinstance(self.teachers, list) or not all(isinstance(t, str) for t in self.teachers):
            raise ValueError(f"config field 'teachers': a list of checkpoint paths, got {self.teachers!r}")
        if self.teachers and self.head != "dex":
            raise ValueError(f"config field 'teachers': distillation needs head 'dex', not {self.head!r}")
        if self.teacher_online and not self.teachers:
            raise ValueError("config field 'teacher_online': needs teachers (checkpoints to run on each batch)")
        if not 0 <= self.teacher_weight <= 1:
            raise ValueError(f"config field 'teacher_weight': a share in [0, 1], got {self.teacher_weight}")
        if self.aux_weight < 0:
            raise ValueError(f"config field 'aux_weight': must be >= 0, got {self.aux_weight}")
        if self.backbone_lr_mult < 0 or self.linear_probe_epochs < 0:
            raise ValueError("config: backbone_lr_mult and linear_probe_epochs must be >= 0")
        if not 0 <= self.swa_epochs <= self.epochs:
            raise ValueError(f"config field 'swa_epochs': between 0 and epochs ({self.epochs}), got {self.swa_epochs}")
        if self.mixup_alpha < 0:
            raise ValueError(f"config field 'mixup_alpha': must be >= 0 (0: off), got {self.mixup_alpha}")
        if self.swa_lr is not None and self.swa_lr < 0:
            raise ValueError(f"config field 'swa_lr': must be >= 0, got {self.swa_lr}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("config: batch_size and epochs must be positive")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's declared type."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # noqa: S307 - our own literal annotations only
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~"))
        if is_none and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"config field {key!r}: cannot read {value!r} as {annotation}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ValueError(f"config field {key!r}: expected true/false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"config field {key!r}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config field {key!r}: expected a number, got {value!r}") from exc
        if annotation is int:
            if number != int(number):
                raise ValueError(f"config field {key!r}: expected an integer, got {value!r}")
            return int(number)
        return number
    if annotation is str:
        return str(value)
    if annotation is list:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, list):
            raise ValueError(f"config field {key!r}: expected a list, got {value!r}")
        return value
    if origin is dict or annotation is dict:
        if isinstance(value, str):
            value = _yaml(value, f"config field {key!r}")
        if not isinstance(value, dict):
            raise ValueError(f"config field {key!r}: expected a mapping, got {value!r}")
        return value
    return value


def _build(cls: type[T], values: dict, origin: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{origin}: unknown config key(s) {unknown}; valid keys: {sorted(fields)}")
    converted = {k: _convert(v, fields[k].type, k) for k, v in values.items()}
    return cls(**converted)


def _yaml(text: str, origin: str) -> Any:
    """``yaml.safe_load(text)``; a syntax error is a one-line ``ValueError`` naming ``origin`` and the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(f"{origin}: not valid YAML ({problem}{where})") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                cls: type[T] = TrainConfig) -> T:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        loaded = _yaml(path.read_text(), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must be a mapping of key: value")
        values.update(loaded)
    config = _build(cls, values, str(path) if path else "config")
    return apply_overrides(config, overrides)


def apply_overrides(config: T, overrides: list[str] | tuple[str, ...]) -> T:
    """``["lr=0.01", "augment=false"]`` applied to a config."""
    values = config_to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        values[key.strip()] = _yaml(raw, f"override {item!r}") if raw.strip() else ""
    return _build(type(config), values, "command-line overrides")


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
