"""Model-only time per face of ONNX graphs and of a checkpoint's float graph, in one run (ONNX Runtime).

    python scripts/graph_speed.py deepage/assets/default_model.pt runs/rr.int8.onnx runs/before/default_model.int8.onnx

Each graph gets the same random batch (``--batch`` faces at the model's input size), a warm-up run, then
``--repeats`` timed runs, at 1 and 2 intra-op threads. A ``.pt`` is exported as ``deepage predict``'s
ONNX backend exports it (cached).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from deepage.checkpoint import model_from_checkpoint
from deepage.inference.export import INPUT_NAME, checked_onnx_bytes, onnx_model_and_record, onnx_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help=".onnx files from deepage export, or .pt checkpoints")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    graphs, size = {}, None
    for path in map(Path, args.models):
        if path.suffix == ".pt":
            model = model_from_checkpoint(path)
            graphs[f"{path} (float graph)"], side = checked_onnx_bytes(model, path), model.spec.preprocessing.input_size
        else:
            graphs[str(path)], side = path.read_bytes(), onnx_model_and_record(path)[0].spec.preprocessing.input_size
        if size not in (None, side):
            raise SystemExit(f"{path}: input {side} px, the others {size} px: time graphs of one input size")
        size = side
    x = np.random.default_rng(0).standard_normal((args.batch, 3, size, size)).astype(np.float32)
    for threads in (1, 2):
        for name, graph in graphs.items():
            session = onnx_session(graph, threads)
            session.run(None, {INPUT_NAME: x})
            t = time.perf_counter()
            for _ in range(args.repeats):
                session.run(None, {INPUT_NAME: x})
            ms = 1000 * (time.perf_counter() - t) / (args.repeats * args.batch)
            print(f"{threads} thread(s)  {ms:6.2f} ms/face  {name}")


if __name__ == "__main__":
    main()
