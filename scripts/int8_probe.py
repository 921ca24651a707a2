"""Would an int8 ONNX graph of a checkpoint answer as well, and how much faster?

Exports ``--checkpoint`` to ONNX, quantises it as ``deepage export --int8`` does
(:func:`deepage.inference.export.quantize_int8`: static QDQ, per-channel weights, activations calibrated on
``--calib`` training images of ``--data``), then runs both graphs on ``--n``
validation images: the validation MAE of each, and the model's milliseconds per face at batch 32 with one
thread (median of ``--repeats`` passes).

    python scripts/int8_probe.py --checkpoint deepage/assets/default_model.pt --data work/utk160.h5
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from deepage.checkpoint import model_from_checkpoint
from deepage.data.loader import load_split, sample_inputs
from deepage.inference.export import INPUT_NAME, OUTPUT_NAME, model_to_onnx_bytes, onnx_session, quantize_int8
from deepage.preprocessing import prepare_batch


def inputs(data, rows: np.ndarray, pre) -> np.ndarray:
    """``(N, 3, S, S)`` float32: the evaluation transform of ``rows`` of ``data``."""
    return prepare_batch(data.read_images(rows), pre).numpy()


def mae_and_ms(session, x: np.ndarray, ages: np.ndarray, head, repeats: int) -> tuple[float, float]:
    outputs = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + 64]})[0]
                              for i in range(0, len(x), 64)])
    mae = float(np.abs(head.predict(torch.from_numpy(outputs)).age.numpy() - ages).mean())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run([OUTPUT_NAME], {INPUT_NAME: x[:32]})
        times.append((time.perf_counter() - t) / 32)
    return mae, 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="deepage/assets/default_model.pt")
    parser.add_argument("--data", required=True)
    parser.add_argument("--n", type=int, default=1000, help="validation images scored (default 1000)")
    parser.add_argument("--calib", type=int, default=256, help="training images for calibration (default 256)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    model = model_from_checkpoint(args.checkpoint)
    pre = model.spec.preprocessing
    calib = sample_inputs(args.data, pre, n=args.calib)  # what `deepage export --int8` calibrates on
    val = load_split(args.data, "val")
    rows = np.sort(np.random.default_rng(0).choice(len(val), min(args.n, len(val)), replace=False))
    x, ages = inputs(val, rows, pre), val.age[rows].numpy().astype(np.float64)
    fp32 = model_to_onnx_bytes(model)
    int8, change = quantize_int8(fp32, calib, args.checkpoint)
    head = model.head.eval()
    print(f"command: python scripts/int8_probe.py {' '.join(argv or sys.argv[1:])}")
    results = {}
    for name, graph in (("fp32", fp32), ("int8", int8)):
        results[name] = mae_and_ms(onnx_session(graph, threads=1), x, ages, head, args.repeats)
        print(f"{name}: val MAE {results[name][0]:.3f} on {len(x)} images, {results[name][1]:.2f} ms/face "
              f"(batch 32, 1 thread), {len(graph) / 1e6:.1f} MB")
    print(f"int8 / fp32 time {results['int8'][1] / results['fp32'][1]:.2f}, MAE change "
          f"{results['int8'][0] - results['fp32'][0]:+.3f}; mean age change on the calibration images "
          f"{change:.3f} years")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
