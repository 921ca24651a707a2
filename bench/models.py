"""Throughput of every registered model on this CPU: a markdown table of parameters, input size, and
training and inference images per second.

    python bench/models.py                                   # every model at 64 px and its native size
    python bench/models.py --sizes 64 --models cnn,alresnet18 --threads 1

Each measurement: one warm-up iteration, then ``--iters`` timed ones, on random ``(B, 3, S, S)`` inputs
with a dex head (training: forward, loss, backward, SGD step). Training at a size is skipped when its
estimate (3 × the measured inference time per batch, × (1 + iters)) exceeds ``--max-train-seconds``;
the table says so. Numbers are lower bounds when something else is using the CPU.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch

from deepage.models import create_model, list_models, model_info


def _time(fn, iters: int) -> float:
    """Seconds per call of ``fn`` after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def bench_one(name: str, size: int, batch_size: int, iters: int, max_train_seconds: float) -> dict:
    """Parameters, inference and training img/s of ``name`` at ``size`` px (training may be skipped)."""
    torch.manual_seed(0)
    model = create_model(name, head="dex", input_size=size)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(batch_size, 3, size, size)
    ages = torch.randint(0, 90, (batch_size,)).float()

    model.eval()

    def infer() -> None:
        with torch.no_grad():
            model(x)

    infer_s = _time(infer, iters)
    row = {"model": name, "parameters": params, "input": size, "infer": batch_size / infer_s, "train": None,
           "note": ""}
    estimate = 3 * infer_s * (1 + iters)
    if estimate > max_train_seconds:
        row["note"] = f"training skipped (estimated {estimate:.0f} s > {max_train_seconds:.0f} s)"
        return row
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(model(x), ages).backward()
        opt.step()

    row["train"] = batch_size / _time(step, iters)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| model | parameters | input | train img/s | inference img/s | note |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        train = f"{r['train']:.1f}" if r["train"] is not None else "—"
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.2f} M | {r['input']} | {train} | "
                     f"{r['infer']:.1f} | {r['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated names (default: all registered)")
    parser.add_argument("--sizes", default="64,native", help="comma-separated sides; 'native' = each model's "
                        "default input size (default: 64,native)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=2, help="timed iterations after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--max-train-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    names = list_models() if args.models is None else [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list_models()}")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s != "native" and not s.isdigit():
            parser.error(f"--sizes: {s!r} is neither an integer nor 'native'")

    given = argv if argv is not None else sys.argv[1:]
    print("command:", shlex.join(["python", "bench/models.py", *given]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch_size}, "
          f"{args.iters} timed iteration(s) after 1 warm-up\n")
    rows = []
    for name in names:
        native = model_info(name)["default_input_size"]
        for side in sorted({native if s == "native" else int(s) for s in sizes}):
            row = bench_one(name, side, args.batch_size, args.iters, args.max_train_seconds)
            rows.append(row)
            train = f"{row['train']:.1f}" if row["train"] is not None else "-"
            print(f"  {name} @ {side}: train {train} img/s, inference {row['infer']:.1f} img/s {row['note']}",
                  file=sys.stderr, flush=True)
    print()
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
