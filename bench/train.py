"""Trainer overhead on the real recipes: ``deepage.training.train`` img/s divided by a bare PyTorch loop.

    python bench/train.py [--models mobilenet_v2,efficientnet_lite0] [--config configs/backbone_study.yaml]
                          [--size 112] [--batch 64] [--steps 20] [--threads 2]

For each model, both train the same network (the recipe of ``--config``: pretrained weights, DEX head,
input size, batch, optimizer, channels-last, threads) on the same in-memory images (512 random 128 px
images written to a temporary HDF5 file), one after the other in one run. The bare loop feeds
pre-normalised tensors: forward, loss, backward, step, nothing else. The trainer adds everything it does
for real (batched augmentation, LR schedule, EMA, progress, budget checks). Goal: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from deepage.config import TrainConfig, apply_overrides, load_config
from deepage.data.loader import FaceBatches, load_split
from deepage.training.engine import build_model, make_optimizer, train


def make_data(path: Path, n: int = 512, size: int = 128) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        f["age"] = rng.integers(1, 90, n).astype(np.int16)
        f["gender"] = np.zeros(n, np.int8)
        f["race"] = np.zeros(n, np.int8)
        f["split"] = np.zeros(n, np.int8)
        f.attrs.update({"complete": True, "size": size, "split_fingerprint": "bench"})


def bare_loop(config: TrainConfig, steps: int) -> float:
    data = load_split(config.data, "train")
    model = build_model(config, data.stored_size).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    batches = list(FaceBatches(data, model.spec.preprocessing, config.batch_size, drop_last=True))
    model.train()
    seen, start = 0, time.perf_counter()
    for step in range(steps):  # timed like the trainer: every step, the first (warm-up) one included
        batch = batches[step % len(batches)]
        x = batch.x.contiguous(memory_format=torch.channels_last)
        loss = model.loss(model(x), batch.age)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(batch.age)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0", help="comma-separated model names")
    parser.add_argument("--config", default="configs/backbone_study.yaml", help="the recipe (data is replaced)")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "bench.h5"
        make_data(data)
        recipe = load_config(args.config) if args.config else TrainConfig()
        for model in args.models.split(","):
            config = apply_overrides(recipe, [
                f"data={data}", "val_split=", f"model={model}", f"input_size={args.size}",
                f"batch_size={args.batch}", "epochs=1000", f"max_steps={args.steps}", "max_minutes=null",
                f"out_dir={tmp}", f"name=bench-{model}", "progress=false", f"num_threads={args.threads}"])
            bare_loop(config, 3)  # warm-up (allocator, kernels), not timed
            bare = bare_loop(config, args.steps)
            trainer = train(config).train_images_per_second
            print(f"{model}: bare PyTorch loop {bare:.1f} img/s, deepage trainer {trainer:.1f} img/s "
                  f"({args.size} px, batch {args.batch}, {args.threads} threads, augment={config.augment}, "
                  f"ema={config.ema_decay}); ratio trainer / bare: {trainer / bare:.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
