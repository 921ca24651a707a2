"""Latency of one face, end to end (read + decode → detect → align → preprocess → infer → answer), for the
PyTorch and ONNX Runtime backends; p50/p95 over ``--runs`` calls, and the ONNX ÷ PyTorch ratio of the p50.

Goals: p50 ≤ 50 ms end to end; ONNX/PyTorch ≤ 0.7. The model alone (the preprocessed batch of one face
through the network and the head) is timed too, since detection costs both backends the same.

    python bench/predict.py                       # the bundled model (and its two graphs), if present
    python bench/predict.py --model deepage/assets/fast_model.int8.onnx   # a two-member default, ~10x cheaper
    python bench/predict.py --model runs/NAME/best.pt --runs 50 --threads 1

With the bundled model the rows are ``torch`` (the ``.pt``), ``onnx`` (its graph exported on the spot),
``graph`` (``default_model.onnx``, what ``Predictor.default()`` answers with: float arithmetic, int8-stored
weights) and ``int8`` (``default_model.int8.onnx``, where a copy has one: the default of 2026-12-06 ships
none). Its three MobileFaceNet members cost it most of its model time per face (``scripts/graph_speed.py``,
batch 32, one thread, an AVX-512 VNNI host: 26.9 ms for its float graph, 20.5-21.4 for the previous default's,
1.8 for the two-member ``fast_model``; for one face end to end 26-29 ms against 25-27 for the previous default:
``docs/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepage.answers import read_batch
from deepage.inference.predictor import DEFAULT_GRAPH, DEFAULT_INT8_MODEL, DEFAULT_MODEL, Predictor, load_rgb
from deepage.preprocessing import images_to_batch

PHOTO = Path(__file__).resolve().parents[1] / "deepage" / "assets" / "astronaut.jpg"


def _interleaved_ms(fns: dict, runs: int, warmup: int) -> dict[str, np.ndarray]:
    """Milliseconds per call of each function, calls interleaved (a, b, a, b, ...) so that every function
    meets the same load from other processes: on a shared machine that keeps the ratios honest."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[name].append((time.perf_counter() - t) * 1000)
    return {k: np.array(v) for k, v in out.items()}


def bench(model: Path, image: Path, runs: int, warmup: int,
          graphs: dict[str, Path] | None = None) -> dict[str, dict[str, float]]:
    """``{backend: {"p50", "p95", "model_p50", "model_p95"}}`` in milliseconds; ``graphs``: also these
    ``.onnx`` files (row name → file: the bundled ones)."""
    backends = ["onnx"] if model.suffix == ".onnx" else ["torch", "onnx"]
    predictors = {b: Predictor.from_checkpoint(model, backend=b) for b in backends}
    for name, graph in (graphs or {}).items():
        predictors[name] = Predictor.from_checkpoint(graph, backend="onnx")
        backends.append(name)
    fns = {}
    for backend, predictor in predictors.items():
        first = predictor.predict_one(image)
        if first.error or len(first.faces) != 1:
            raise SystemExit(f"expected one face in {image}, got {first.error or len(first.faces)}")
        chip = predictor.aligner.align_largest(load_rgb(image)[0])
        x = images_to_batch([chip], predictor.spec.preprocessing).numpy()
        fns[f"{backend}/e2e"] = lambda p=predictor: p.predict_one(image)
        fns[f"{backend}/model"] = lambda p=predictor, x=x: read_batch(p._logits, p._read, x)
    times = _interleaved_ms(fns, runs, warmup)
    return {b: {"p50": float(np.percentile(times[f"{b}/e2e"], 50)),
                "p95": float(np.percentile(times[f"{b}/e2e"], 95)),
                "model_p50": float(np.percentile(times[f"{b}/model"], 50)),
                "model_p95": float(np.percentile(times[f"{b}/model"], 95))} for b in backends}


def stages(image: Path, runs: int, warmup: int) -> dict[str, float]:
    """p50 in milliseconds of the steps both backends share: read + decode, detect + landmarks + chip."""
    from deepage.faces import FaceAligner

    aligner = FaceAligner()
    rgb = load_rgb(image)[0]
    times = _interleaved_ms({"decode": lambda: load_rgb(image), "detect+align": lambda: aligner.detect(rgb)},
                            runs, warmup)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint or .onnx (default: the bundled model)")
    parser.add_argument("--image", default=str(PHOTO), help="photo with one face (default: the astronaut)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch and ONNX Runtime threads (default 1)")
    args = parser.parse_args(argv)
    model = Path(args.model) if args.model else DEFAULT_MODEL
    if not model.is_file():
        print(f"no model at {model}: pass --model CKPT", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    bundled = {"graph": DEFAULT_GRAPH, "int8": DEFAULT_INT8_MODEL}
    graphs = {k: v for k, v in bundled.items() if args.model is None and v.is_file()}
    results = bench(model, Path(args.image), args.runs, args.warmup, graphs=graphs)
    print("command: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    print(f"model: {model}; image: {args.image}; {args.runs} runs after {args.warmup} warm-up; "
          f"{args.threads} thread(s)")
    print(f"{'backend':<8}{'e2e p50 ms':>12}{'e2e p95 ms':>12}{'model p50 ms':>14}{'model p95 ms':>14}")
    for name, r in results.items():
        print(f"{name:<8}{r['p50']:>12.1f}{r['p95']:>12.1f}{r['model_p50']:>14.2f}{r['model_p95']:>14.2f}")
    shared = stages(Path(args.image), args.runs, args.warmup)
    print("shared by both backends (p50 ms): " + ", ".join(f"{k} {v:.1f}" for k, v in shared.items()))
    for name, what in (("graph", "the bundled graph, what Predictor.default() runs"),
                       ("int8", "the int8 graph, Predictor.default(int8=True)")):
        if name in results:
            print(f"{name} ({what}) / PyTorch p50: end to end {results[name]['p50'] / results['torch']['p50']:.2f}, "
                  f"model alone {results[name]['model_p50'] / results['torch']['model_p50']:.2f}")
    if "torch" in results:
        print(f"ONNX / PyTorch p50: end to end {results['onnx']['p50'] / results['torch']['p50']:.2f}, "
              f"model alone {results['onnx']['model_p50'] / results['torch']['model_p50']:.2f} "
              "(goals: e2e p50 <= 50 ms, ratio <= 0.7)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
