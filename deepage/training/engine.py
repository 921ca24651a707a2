"""The training engine: ``train(config)`` and ``train(resume=RUN_DIR)``.

A run folder holds ``config.yaml`` (resolved), ``metrics.csv`` / ``history.json`` (one row per epoch),
``last.pt`` (everything needed to resume: weights, EMA, optimizer, step, RNG) and ``best.pt`` (weights and
validation metrics of the best epoch), both written atomically, and ``summary.json``.

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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import TrainConfig, config_to_dict, load_config, save_config
from ..data.loader import FaceBatches, FaceData, load_split
from ..evaluation.metrics import core_metrics
from ..evaluation.predictions import Predictions, collect_predictions
from ..models.registry import AgeModel, create_model
from ..preprocessing import TRAIN_AUGMENTATION

__all__ = ["train", "TrainResult", "CHECKPOINT_MINUTES", "build_model", "make_optimizer", "lr_at"]

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


def build_model(config: TrainConfig, stored_size: int) -> AgeModel:
    """The model a training config asks for."""
    return create_model(config.model, head=config.head, scheme=config.scheme, input_size=config.input_size,
                        pretrained=config.pretrained, weights=config.weights, stored_size=stored_size,
                        crop_pct=config.crop_pct, normalization=config.normalization,
                        head_kwargs=dict(config.head_kwargs), **config.model_kwargs)


def _init_weights_from(model: AgeModel, path: str) -> None:
    """Start from a deepage checkpoint's weights (fine-tuning, e.g. at a higher resolution).

    The architecture and head must match; the preprocessing (input size) may differ. Loaded with
    ``weights_only=True`` like every checkpoint.
    """
    ckpt = load_checkpoint(path)
    spec = ckpt.get("spec", {})
    for key in ("name", "head"):
        if spec.get(key) != getattr(model.spec, key):
            raise ValueError(f"config field 'init_from': {path} holds {key} {spec.get(key)!r}, "
                             f"this run builds {getattr(model.spec, key)!r}")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"config field 'init_from': {path} does not fit this model: {exc}") from exc


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD; no weight decay on biases and norm layers (1-d parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int, elapsed_s: float) -> float:
    """Learning rate at ``step``: linear warm-up, then cosine / step / constant.

    With ``max_minutes`` the cosine follows whichever budget (steps or time) is further along, so a
    time-budgeted run still ends at a low rate.
    """
    warmup = max(1, int(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    total = config.epochs * steps_per_epoch
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


def _class_weights(data: FaceData, scheme: str) -> torch.Tensor:
    from ..labels import get_scheme

    s = get_scheme(scheme)
    counts = np.bincount(np.asarray(s.classify(data.age.numpy())), minlength=s.num_classes).astype(float)
    weights = counts.sum() / np.maximum(counts, 1) / s.num_classes
    return torch.tensor(weights, dtype=torch.float32)


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


def train(config: TrainConfig | None = None, resume: str | Path | None = None,
          overrides: tuple[str, ...] = ()) -> TrainResult:
    """Train from ``config``, or resume the run in folder ``resume`` (``overrides`` may extend its budget)."""
    rank, world, local_rank = _dist_info()
    state: dict | None = None
    if resume is not None:
        run_dir = Path(resume)
        last = run_dir / "last.pt"
        if not last.is_file():
            raise FileNotFoundError(f"{run_dir}: no last.pt to resume from")
        state = load_checkpoint(last)
        config = load_config(run_dir / "config.yaml", overrides)
    elif config is None:
        raise ValueError("train() needs a config or a run folder to resume")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and config.device != "cpu" else "gloo")
    device = _device(config, local_rank)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed + rank)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    if not config.data:
        raise ValueError("config: 'data' (an ingested HDF5 file) is required")
    train_data = load_split(config.data, config.train_split, drop_conflicting=config.drop_conflicting_duplicates)
    val_data = load_split(config.data, config.val_split) if config.val_split else None
    if device.type == "cuda" and train_data.images is not None:
        # Keep the uint8 split on the GPU: batches are gathered and augmented there (no host transfers).
        train_data.images = train_data.images.to(device)
    model = build_model(config, train_data.stored_size)
    if config.init_from and state is None:
        _init_weights_from(model, config.init_from)
    pre = model.spec.preprocessing
    if config.head == "classes" and config.class_weights:
        model.head.class_weights = _class_weights(train_data, config.scheme)
    if config.head == "classes" and config.label_smoothing:
        model.head.label_smoothing = config.label_smoothing
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)

    if resume is None:
        name = config.name or f"{config.model}-{config.head}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(config.out_dir) / name
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")  # on resume: with the overrides it was given

    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True) \
        if config.ema_decay > 0 else None
    optimizer = make_optimizer(config, model)
    train_model: torch.nn.Module = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None)

    batches = FaceBatches(train_data, pre, config.batch_size, shuffle=True,
                          augment=TRAIN_AUGMENTATION if config.augment else None, drop_last=True,
                          seed=config.seed, rank=rank, world_size=world)
    steps_per_epoch = len(batches)
    if steps_per_epoch == 0:
        raise ValueError(f"training split has {len(train_data)} images: fewer than one batch of "
                         f"{config.batch_size} per rank")

    epoch, step, start_batch, train_seconds, images_seen = 0, 0, 0, 0.0, 0
    history: list[dict] = []
    best_score, bad_epochs = math.inf, 0
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema_state") is not None:
            ema.load_state_dict(state["ema_state"])
        t = state["train_state"]
        epoch, step, start_batch = t["epoch"], t["step"], t["batch_in_epoch"]
        train_seconds, images_seen = t["train_seconds"], t["images_seen"]
        best_score, bad_epochs, history = t["best_score"], t["bad_epochs"], t["history"]
        torch.set_rng_state(state["rng"])

    use_amp = (config.amp and device.type == "cuda") or (config.cpu_bf16 and device.type == "cpu")
    eval_model = ema.module if ema is not None else model

    def payload(kind: str, metrics: dict | None = None) -> dict:
        weights = eval_model.state_dict() if kind == "best" else model.state_dict()
        out = {"spec": model.spec.to_dict(), "state_dict": weights, "split_fingerprint": train_data.fingerprint,
               "metrics": metrics or {}, "config": config_to_dict(config)}
        if kind == "last":
            out.update({
                "optimizer": optimizer.state_dict(),
                "ema_state": ema.state_dict() if ema is not None else None,
                "rng": torch.get_rng_state(),
                "train_state": {"epoch": epoch, "step": step, "batch_in_epoch": start_batch,
                                "train_seconds": train_seconds, "images_seen": images_seen,
                                "best_score": best_score, "bad_epochs": bad_epochs, "history": history},
            })
        return out

    def out_of_budget() -> str | None:
        if config.max_steps is not None and step >= config.max_steps:
            return "max_steps"
        if config.max_minutes is not None and train_seconds >= config.max_minutes * 60:
            return "max_minutes"
        return None

    stopped_by = out_of_budget() or ("epochs" if epoch >= config.epochs else "")
    last_save = time.perf_counter()
    while not stopped_by:
        batches.set_epoch(epoch)
        train_model.train()
        bar = None
        if config.progress and rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=steps_per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       dynamic_ncols=True, leave=False)
        loss_sum, loss_n = 0.0, 0
        epoch_seconds_before = train_seconds
        tick = time.perf_counter()  # the budget counts data preparation too, not validation
        for batch in batches.iter_from(start_batch):
            x, ages = batch.x.to(device, non_blocking=True), batch.age.to(device, non_blocking=True)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = lr_at(config, step, steps_per_epoch, train_seconds)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                outputs = train_model(x)
            loss = model.loss(outputs, ages)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            start_batch += 1
            images_seen += len(ages) * world
            loss_sum += float(loss.detach()) * len(ages)
            loss_n += len(ages)
            now = time.perf_counter()
            train_seconds += now - tick
            tick = now
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum / loss_n:.3f}", lr=f"{lr:.2e}")
                bar.update(1)
            stopped_by = out_of_budget()
            if stopped_by:
                break
            if time.perf_counter() - last_save > CHECKPOINT_MINUTES * 60 and rank == 0:
                save_checkpoint(run_dir / "last.pt", payload("last"))
                last_save = time.perf_counter()
        if bar is not None:
            bar.close()
        epoch_done = start_batch >= steps_per_epoch
        if epoch_done:
            epoch, start_batch = epoch + 1, 0
        row = {"epoch": epoch if epoch_done else epoch + start_batch / steps_per_epoch, "step": step,
               "train_loss": round(loss_sum / max(1, loss_n), 5), "lr": lr_at(config, step, steps_per_epoch,
                                                                             train_seconds),
               "train_seconds": round(train_seconds, 1),
               # throughput of this epoch's training steps: the number to check against a quiet machine's
               "train_img_per_s": round(loss_n * world / max(1e-9, train_seconds - epoch_seconds_before), 1)}
        metrics: dict = {}
        if val_data is not None and len(val_data):
            val_batches = FaceBatches(val_data, pre, config.eval_batch_size, rank=rank, world_size=world)
            preds = _gather(collect_predictions(eval_model, val_batches, device, channels_last=config.channels_last),
                            world)
            metrics = core_metrics(preds)
            row.update(_flat(metrics, "val_"))
            score = _monitor(metrics, config.head, config.scheme)
            if score < best_score:
                best_score, bad_epochs = score, 0
                if rank == 0:
                    save_checkpoint(run_dir / "best.pt", payload("best", metrics))
            else:
                bad_epochs += 1
        elif rank == 0:
            save_checkpoint(run_dir / "best.pt", payload("best", {}))
        history.append(row)
        if rank == 0:
            _write_history(run_dir, history)
            save_checkpoint(run_dir / "last.pt", payload("last"))
            last_save = time.perf_counter()
            if config.progress:
                shown = {k: v for k, v in row.items()
                         if k.startswith(("val_age", "val_utk", "train_loss", "train_img_per_s"))}
                print(f"epoch {row['epoch']:.2f} step {step}: " + ", ".join(f"{k} {v}" for k, v in shown.items()),
                      flush=True)
        if not stopped_by and epoch >= config.epochs:
            stopped_by = "epochs"
        if not stopped_by and config.early_stopping_patience and bad_epochs >= config.early_stopping_patience:
            stopped_by = "early_stopping"

    best = load_checkpoint(run_dir / "best.pt")["metrics"] if (run_dir / "best.pt").is_file() else {}
    result = TrainResult(run_dir=run_dir, best_metrics=best, epochs_done=epoch, steps=step,
                         train_seconds=train_seconds,
                         train_images_per_second=images_seen / train_seconds if train_seconds else 0.0,
                         stopped_by=stopped_by)
    if rank == 0:
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
        summary["num_parameters"] = sum(p.numel() for p in model.parameters())
        summary["world_size"] = world
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if world > 1:
        dist.barrier()
    return result

