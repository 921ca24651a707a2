"""``deepage``: a thin command line over the library (each command parses flags and calls one function)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .data.ingest import ingest

    bar = tqdm(desc="ingest", unit="img", disable=not sys.stderr.isatty())
    summary = ingest(args.source, args.output, size=args.size, workers=args.workers, labels_csv=args.labels,
                     align=args.align, overwrite=args.overwrite, progress=lambda n: bar.update(n - bar.n))
    bar.close()
    if summary.already_done:
        print(f"{summary.output} is already a finished ingest (use --overwrite to rebuild)")
    elif summary.resumed_from:
        print(f"resumed an interrupted ingest at entry {summary.resumed_from}")
    print(f"ingested {summary.n_images} images of {summary.n_entries} files into {summary.output}; "
          f"skipped {summary.n_skipped}" + (f" ({summary.seconds:.1f} s)" if summary.seconds else ""))
    for name, reason in summary.skipped:
        print(f"  skipped {name}: {reason}")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from .data.split import copy_split, export_csv, split_dataset

    if args.copy_from:
        info = copy_split(args.copy_from, args.data)
    else:
        info = split_dataset(args.data, test=args.test, val=args.val, seed=args.seed, stratify=args.stratify,
                             near_threshold=args.near_threshold)
    print(f"split {args.data}: " + ", ".join(f"{k} {v}" for k, v in info.counts.items())
          + f"; fingerprint {info.fingerprint}; {info.n_images_in_dup_groups} images in duplicate groups")
    if args.export_csv:
        n = export_csv(args.data, args.export_csv)
        print(f"wrote {n} rows to {args.export_csv}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .data.info import dataset_info, format_info

    info = dataset_info(args.data)
    print(json.dumps(info, indent=1) if args.json else format_info(info))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models.catalog import model_table

    rows = model_table()
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'name':<22}{'params':>12}  {'input':>5}  {'norm':<9} description")
        for r in rows:
            print(f"{r['name']:<22}{r['parameters']:>12,}  {r['default_input_size']:>5}  {r['normalization']:<9} "
                  f"{r['description']}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training.engine import train

    if args.resume:
        result = train(resume=args.resume, overrides=tuple(args.overrides))
    else:
        result = train(load_config(args.config, args.overrides))
    print(f"run folder {result.run_dir}: {result.epochs_done} epochs, {result.steps} steps, "
          f"stopped by {result.stopped_by}; {result.train_images_per_second:.1f} img/s")
    print("best validation metrics: " + json.dumps(result.best_metrics))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.data, split=args.split, out_dir=args.out,
                                 batch_size=args.batch_size, tta_flip=args.tta)
    print(result.summary_text())
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .evaluation.compare import compare_runs

    table = compare_runs(args.runs, out_dir=args.out)
    print(table)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .inference.predict_cli import run_predict

    try:
        return run_predict(args.paths, model=args.model, fmt=args.format, annotate_dir=args.annotate,
                           detect=not args.no_detect, explain=args.explain, backend=args.backend, tta=args.tta,
                           workers=args.workers, output=args.output, skip_existing=args.skip_existing,
                           progress=False if args.quiet else None)
    except KeyboardInterrupt:  # every answer made so far is already written (and flushed)
        resume = " (add --skip-existing to resume)" if args.output else ""
        print(f"\ndeepage predict: interrupted{resume}", file=sys.stderr)
        return 130


def _cmd_export(args: argparse.Namespace) -> int:
    from .inference.export import export_onnx

    path = export_onnx(args.checkpoint, args.output)
    print(f"wrote {path}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .inference.server import serve

    serve(host=args.host, port=args.port, model=args.model, max_concurrency=args.max_concurrency,
          workers=args.workers, request_timeout_s=args.timeout, max_upload_bytes=int(args.max_upload_mb * 2**20))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .inference.demo import run_demo

    return run_demo()


class _Help(argparse.RawDescriptionHelpFormatter):
    """Help that keeps the examples' line breaks."""


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="deepage", description="Age estimation from face images.")
    parser.add_argument("--version", action="version", version=f"deepage {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="read a UTKFace folder/archive (or any labelled face folder) into HDF5")
    p.add_argument("source", help="folder, .tar(.gz) or .zip")
    p.add_argument("-o", "--output", required=True, help="HDF5 file to write")
    p.add_argument("--size", type=int, default=128, help="square side of stored images (default 128)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--labels", default=None, help="CSV with columns path,age[,gender,race] (other datasets)")
    p.add_argument("--align", action="store_true", help="detect and align the face in each image first")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if OUTPUT exists")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("split", help="save a stratified, duplicate-aware train/val/test split")
    p.add_argument("data")
    p.add_argument("--test", type=float, default=0.2)
    p.add_argument("--val", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stratify", default="utk14", help="label scheme to stratify by (default utk14)")
    p.add_argument("--near-threshold", type=int, default=4,
                   help="perceptual-hash bits within which images count as near duplicates (default 4)")
    p.add_argument("--export-csv", default=None, help="write filename,split for every image")
    p.add_argument("--from", dest="copy_from", default=None, metavar="OTHER_H5",
                   help="copy the split saved in OTHER_H5 (the same images at another size) instead")
    p.set_defaults(func=_cmd_split)

    p = sub.add_parser("info", help="summarise an ingested HDF5 file")
    p.add_argument("data")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train a model from a YAML config (key=value overrides follow)")
    p.add_argument("--config", default=None, help="YAML config (see configs/)")
    p.add_argument("--resume", default=None, help="run folder to resume")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a split")
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--out", default=None, help="output folder (default: beside the checkpoint)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--tta", action="store_true", help="average with the mirrored image")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("compare", help="leaderboard over run folders")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="leaderboard", help="output folder (markdown, CSV, bar chart)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "predict", help="estimate ages in photos (files or folders)", formatter_class=_Help,
        description="Find every face in photos, align it as UTKFace's chips were, and estimate its age. "
                    "Answers are written as they are made; a bar shows progress on a terminal.",
        epilog="example: deepage predict holiday/ --format csv -o ages.csv --workers 2\n"
               "resume:  deepage predict holiday/ --format csv -o ages.csv --skip-existing")
    p.add_argument("paths", nargs="+", help="image files and folders (searched recursively)")
    p.add_argument("--model", default=None, help="checkpoint (.pt) or .onnx file (default: the bundled model)")
    p.add_argument("--format", default="table", choices=["table", "json", "csv"],
                   help="table: readable lines; json: one object per image per line; csv: one row per face "
                        "(default table)")
    p.add_argument("-o", "--output", default=None, help="write the answers to this file (default: stdout)")
    p.add_argument("--skip-existing", action="store_true",
                   help="resume into --output: skip the images an earlier run already wrote there")
    p.add_argument("--annotate", default=None, help="folder for copies with boxes and ages drawn")
    p.add_argument("--no-detect", action="store_true", help="images are already face crops")
    p.add_argument("--explain", action="store_true", help="AL-ResNet: draw the attended regions")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                   help="auto (default): ONNX Runtime for .onnx files, and for checkpoints when it is installed")
    p.add_argument("--tta", action="store_true", help="also read the mirror image and average (2x the model cost)")
    p.add_argument("--workers", type=int, default=1, help="processes that decode and find faces (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="export a checkpoint to ONNX", formatter_class=_Help,
                       description="Export a checkpoint to ONNX (dynamic batch axis, the model's spec in the "
                                   "file), checked against PyTorch before it is written.",
                       epilog="example: deepage export deepage/assets/default_model.pt -o model.onnx")
    p.add_argument("checkpoint", help="DeepAge checkpoint (.pt)")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("serve", help="HTTP service with a web page", formatter_class=_Help,
                       description="Serve a model over HTTP: a web page at /, POST /predict, GET /healthz.",
                       epilog="example: deepage serve --port 8000 --model model.onnx")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--model", default=None, help="checkpoint (.pt) or .onnx file (default: the bundled model)")
    p.add_argument("--max-concurrency", type=int, default=64,
                   help="requests admitted at once; more get 503 (default 64)")
    p.add_argument("--workers", type=int, default=1, help="inference threads (default 1)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a request gets 504 (default 30)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="larger uploads get 413 (default 10)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("demo", help="find the face in a bundled photo and print its age")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"deepage {args.command}: error: {exc}", file=sys.stderr)
        return 2
