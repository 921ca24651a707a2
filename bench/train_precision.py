"""Training speed by precision and compilation: fp32, bfloat16 autocast, and bfloat16 + ``torch.compile``,
each as a ratio to fp32 measured in the same run (issue 15: "measure cpu_bf16 and torch.compile").

    python bench/train_precision.py                                     # dlib_resnet 150 px, mobilenet_v2 112 px
    python bench/train_precision.py --models dlib_resnet:150 --steps 12 --no-compile

Each variant trains the same network (pretrained where offline weights exist, DEX head, AdamW, batch
``--batch``, channels-last, ``--threads``) on random inputs: ``--warmup`` untimed steps (compilation
happens there), then ``--steps`` timed ones. Rounds alternate the variants so each meets the same load.
bfloat16 helps dense convolutions on CPUs with AVX-512 BF16 / AMX and hurts depthwise ones: measure per
model and host.
"""

from __future__ import annotations

import argparse
import time

import torch

from deepage.models import create_model, model_info


def _stepper(name: str, size: int, batch: int, bf16: bool, compiled: bool):
    torch.manual_seed(0)
    model = create_model(name, head="dex", input_size=size,
                         pretrained=model_info(name)["pretrained_offline"]).to(memory_format=torch.channels_last)
    model.train()
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    ages = torch.randint(1, 90, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = forward(x)
        loss = model.loss(outputs.float(), ages)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="dlib_resnet:150,mobilenet_v2:112", help="NAME:SIZE,...")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {"fp32": (False, False), "bf16": (True, False)}
    if not args.no_compile:
        variants["bf16+compile"] = (True, True)
    print(f"| model | input | {' | '.join(f'{v} img/s' for v in variants)} | "
          f"{' | '.join(f'{v} / fp32' for v in variants if v != 'fp32')} |")
    print("|---" * (2 + 2 * len(variants) - 1) + "|")
    for item in args.models.split(","):
        name, size = item.split(":")
        steppers = {v: _stepper(name, int(size), args.batch, *flags) for v, flags in variants.items()}
        for step in steppers.values():
            for _ in range(args.warmup):
                step()
        seconds = dict.fromkeys(steppers, 0.0)
        for _ in range(args.rounds):
            for variant, step in steppers.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                seconds[variant] += time.perf_counter() - start
        rate = {v: args.batch * args.steps * args.rounds / s for v, s in seconds.items()}
        ratios = " | ".join(f"{rate[v] / rate['fp32']:.2f}" for v in variants if v != "fp32")
        print(f"| {name} | {size} | {' | '.join(f'{rate[v]:.1f}' for v in variants)} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
