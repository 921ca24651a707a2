"""Trainer overhead: ``deepage.training.train`` img/s divided by a bare PyTorch loop, in one run.

    python bench/train.py [--model mobilenet_v2] [--size 112] [--batch 64] [--steps 20]

Both train the same model (same input size, batch, optimizer, channels-last, threads) on the same
in-memory images (512 random 128 px images written to a temporary HDF5 file). The bare loop feeds
pre-normalised tensors: forward, loss, backward, step, nothing else. The trainer adds everything it
does for real (batched augmentation, LR schedule, EMA, progress, budget checks). Goal: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from deepage.config import TrainConfig
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
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "bench.h5"
        make_data(data)
        config = TrainConfig(data=str(data), val_split="", model=args.model, input_size=args.size,
                             batch_size=args.batch, epochs=1000, max_steps=args.steps, ema_decay=0.998,
                             out_dir=tmp, name="bench", progress=False, num_threads=args.threads)
        bare_loop(config, 3)  # warm-up (allocator, kernels), not timed
        bare = bare_loop(config, args.steps)
        result = train(config)
        trainer = result.train_images_per_second
    print(f"bare PyTorch loop: {bare:.1f} img/s ({args.model}, {args.size} px, batch {args.batch}, "
          f"{args.threads} threads)")
    print(f"deepage trainer:   {trainer:.1f} img/s (augmentation, EMA, schedule, budget checks)")
    print(f"ratio trainer / bare: {trainer / bare:.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
