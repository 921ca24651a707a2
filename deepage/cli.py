"""``deepage``: a thin command line over the library (each command parses flags and calls one function)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
from collections.abc import Callable

__all__ = ["main", "build_parser"]


def _cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .data.ingest import ingest

    bar = tqdm(desc="ingest", unit="img", disable=not sys.stderr.isatty())
    summary = ingest(args.source, args.output, size=args.size, workers=args.workers, labels_csv=args.labels,
                     align=args.align, overwrite=args.overwrite, progress=lambda n: bar.update(n - bar.n),
                     label_format=args.format, max_file_mb=args.max_file_mb)
    bar.close()
    if summary.already_done:
        print(f"{summary.output} is already a finished ingest (use --overwrite to rebuild)")
    elif summary.resumed_from:
        print(f"resumed an interrupted ingest at entry {summary.resumed_from}")
    print(f"ingested {summary.n_images} images of {summary.n_entries} files into {summary.output}; "
          f"skipped {summary.n_skipped}" + (f" ({summary.seconds:.1f} s)" if summary.seconds else ""))
    for name, reason in summary.skipped:
        print(f"  skipped {name}: {reason}")
    if summary.duplicate_names:
        print(f"{len(summary.duplicate_names)} file(s) skipped because their name was already ingested "
              "(the source holds the same name twice; the first was kept)")
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


def _cmd_duplicates(args: argparse.Namespace) -> int:
    from .data.duplicates import duplicate_report, write_duplicates_csv

    groups = duplicate_report(args.data)
    shown = [g for g in groups if g.conflicting_age] if args.conflicts_only else groups
    if args.csv:
        n = write_duplicates_csv(shown, args.csv)
        print(f"wrote {n} rows to {args.csv}")
    if args.json:
        print(json.dumps([g.to_dict() for g in shown], indent=1))
    elif not args.csv:
        for g in shown:
            flag = f"CONFLICT (ages {min(g.ages)}-{max(g.ages)})" if g.conflicting_age else "same age"
            print(f"group {g.group}: {len(g.rows)} images, {flag}, split {'/'.join(sorted(set(g.splits)))}")
            for name, age, split in zip(g.filenames, g.ages, g.splits, strict=True):
                print(f"  {age:>3}  {split:<5}  {name}")
    n_conflict = sum(g.conflicting_age for g in groups)
    print(f"{len(groups)} duplicate groups ({sum(len(g.rows) for g in groups)} images); {n_conflict} with "
          f"conflicting ages ({sum(len(g.rows) for g in groups if g.conflicting_age)} images)", file=sys.stderr)
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
                                 batch_size=args.batch_size, tta_flip=args.tta, adult_age=args.adult_age)
    print(result.summary_text())
    if args.degrade:
        from .evaluation.robustness import evaluate_degraded

        report = evaluate_degraded(args.checkpoint, args.data, split=result.split, degradations=args.degrade,
                                   out_dir=result.out_dir, batch_size=args.batch_size, tta_flip=args.tta)
        print("\n".join(f"  {label}: MAE {m['mae']:.2f}, CS@5 {100 * m['cs5']:.1f} %, mean signed error "
                        f"{m['mean_signed_error']:+.2f}" for label, m in report["conditions"].items()))
        print(f"wrote degraded.json and degraded.md to {result.out_dir}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .evaluation.calibrate import calibrate_checkpoint

    result = calibrate_checkpoint(args.checkpoint, args.data, split=args.split, adult_age=args.adult_age,
                                  max_minors_passed=args.max_minors_passed, max_adults_held=args.max_adults_held,
                                  output=args.output, batch_size=args.batch_size, tta_flip=args.tta,
                                  temperature=args.temperature)
    print(result.summary_text())
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from .models.ensemble import build_ensemble_checkpoint

    payload = build_ensemble_checkpoint(args.checkpoints, args.output, data=args.data, split=args.split,
                                        weights=args.weights, antialias=args.antialias)
    print(f"wrote {args.output}: an ensemble of {len(args.checkpoints)} models")
    if payload["metrics"]:
        print(f"{args.split}: " + json.dumps(payload["metrics"]))
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
                           progress=False if args.quiet else None, ray=args.ray, every=args.every,
                           camera=args.camera, tracks=args.tracks, max_missed=args.max_missed,
                           adult_age=args.adult_age)
    except KeyboardInterrupt:  # every answer made so far is already written (and flushed)
        resume = " (add --skip-existing to resume)" if args.output else ""
        print(f"\ndeepage predict: interrupted{resume}", file=sys.stderr)
        return 130


def _workers_arg(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number of at least 1, got {text!r}")
    return int(text)


def _adult_age_arg(text: str) -> int | str | None:
    if text in ("auto", "off"):
        return None if text == "off" else text
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"expected an age from 1 to 100, 'auto' or 'off', got {text!r}")
    return int(text)


def _cmd_export(args: argparse.Namespace) -> int:
    from .inference.export import export_onnx

    if args.int8 and args.weights == "int8":  # before the calibration images are read
        raise ValueError("--int8 writes int8 weights already; --weights int8 is for a float graph")
    calibration = None
    if args.int8:
        from .checkpoint import load_checkpoint
        from .data.loader import sample_inputs
        from .models.registry import ModelSpec

        pre = ModelSpec.from_dict(load_checkpoint(args.checkpoint)["spec"]).preprocessing
        calibration = sample_inputs(args.int8, pre, n=args.int8_images)
    path = export_onnx(args.checkpoint, args.output, int8_calibration=calibration, weights=args.weights)
    print(f"wrote {path}" + (f" (int8, calibrated on {len(calibration)} training images of {args.int8})"
                             if calibration is not None else
                             " (float, int8-stored weights)" if args.weights == "int8" else ""))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .inference.server import serve

    serve(host=args.host, port=args.port, model=args.model, max_concurrency=args.max_concurrency,
          workers=args.workers, request_timeout_s=args.timeout, max_upload_bytes=int(args.max_upload_mb * 2**20),
          max_uploads=args.max_uploads, upload_timeout_s=args.upload_timeout)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .inference.demo import run_demo

    return run_demo()


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (an off switch or a None default is left to the help text);
    descriptions and examples keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.required:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be computed when help is shown (``train --help`` lists the config
    keys and model names; nothing else pays for that)."""

    def __init__(self, *args, lazy_epilog: Callable[[], str] | None = None, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.lazy_epilog = lazy_epilog

    def format_help(self) -> str:
        if self.lazy_epilog is not None:
            self.epilog = (self.epilog or "") + self.lazy_epilog()
            self.lazy_epilog = None
        return super().format_help()


def _train_epilog() -> str:
    from .config import TrainConfig  # yaml only; torch is imported when a config is built
    from .models.registry import list_models  # torch and every family: only `train --help` pays (~2 s)

    keys = [f"{f.name}={f.default if f.default is not dataclasses.MISSING else '{}'}"
            for f in dataclasses.fields(TrainConfig)]
    lines, line = [], " "
    for key in keys:
        if len(line) + len(key) > 100:
            lines.append(line)
            line = " "
        line += " " + key
    lines.append(line)
    return ("\n\nconfig keys (key=default; set them in the YAML file or as key=value arguments):\n"
            + "\n".join(lines) + "\n\nmodels:\n" + textwrap.fill(", ".join(list_models()), 100, initial_indent="  ",
                                                                  subsequent_indent="  ")
            + "\nheads: classes (needs scheme), dex, coral; see `deepage models` and docs/MODELS.md")


def _add(sub: argparse._SubParsersAction, name: str, summary: str, example: str, func: Callable,
         **kwargs) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=summary + ".", epilog="example:\n  " + example, **kwargs)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``deepage`` parser. Longer than 60 lines on purpose: a flat table, one block per command, each
    argument with its help; splitting it would only scatter the table."""
    from . import __version__
    from .data.sources import LABEL_FORMATS, MAX_FILE_MB  # plain Python: no numpy, no torch

    parser = _Parser(prog="deepage", description="Age estimation from face images: ingest, split, train, evaluate, "
                     "predict, serve.", epilog="`deepage COMMAND --help` describes each command, with an example.")
    parser.add_argument("--version", action="version", version=f"deepage {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = _add(sub, "ingest", "read a UTKFace/FG-NET folder or archive (or any labelled face folder) into one HDF5 file",
             "deepage ingest ../shared/data/UTKFace.tar.gz -o work/utk128.h5 --size 128", _cmd_ingest)
    p.add_argument("source", help="folder, .tar(.gz) or .zip of images")
    p.add_argument("-o", "--output", required=True, help="HDF5 file to write (resumable: re-run after a kill)")
    p.add_argument("--size", type=int, default=128, help="square side of stored images, pixels")
    p.add_argument("--format", default="utkface", choices=sorted(LABEL_FORMATS),
                   help="how labels are read from file names: utkface (age_gender_race_date.jpg) or fgnet "
                   "(001A02.JPG: subject 001, age 2; gender and race stored as -1, unknown)")
    p.add_argument("--labels", default=None, help="CSV with columns path,age[,gender,race], instead of names")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (None: all cores)")
    p.add_argument("--align", action="store_true", help="detect and align the face in each image first")
    p.add_argument("--max-file-mb", type=float, default=MAX_FILE_MB,
                   help="files larger than this (declared size) are skipped unread")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if OUTPUT or OUTPUT.partial exists")

    p = _add(sub, "split", "save a stratified, duplicate-aware train/val/test split in the HDF5 file",
             "deepage split work/utk128.h5 --test 0.2 --val 0.1 --seed 0 --export-csv work/splits.csv",
             _cmd_split)
    p.add_argument("data", help="ingested HDF5 file")
    p.add_argument("--test", type=float, default=0.2, help="fraction of images for the test split")
    p.add_argument("--val", type=float, default=0.1, help="fraction of images for the validation split")
    p.add_argument("--seed", type=int, default=0, help="random seed of the split")
    p.add_argument("--stratify", default="utk14", help="label scheme to stratify by")
    p.add_argument("--near-threshold", type=int, default=4,
                   help="perceptual-hash bits within which images count as near duplicates")
    p.add_argument("--export-csv", default=None, help="also write filename,split for every image to this CSV")
    p.add_argument("--from", dest="copy_from", default=None, metavar="OTHER_H5",
                   help="copy the split saved in OTHER_H5 (the same images at another size) instead")

    p = _add(sub, "duplicates", "audit the duplicate groups of a split file (same photo, other labels): each "
             "group with its labels and splits, groups whose ages conflict flagged",
             "deepage duplicates work/utk128.h5 --conflicts-only", _cmd_duplicates)
    p.add_argument("data", help="an ingested and split HDF5 file")
    p.add_argument("--conflicts-only", action="store_true", help="only groups whose ages differ (default: all)")
    p.add_argument("--json", action="store_true", help="print the groups as JSON (default: a readable list)")
    p.add_argument("--csv", default=None, help="write one row per member to this CSV file (default: none)")

    p = _add(sub, "info", "summarise an ingested HDF5 file (counts, classes, split, skipped files)",
             "deepage info work/utk128.h5 --json", _cmd_info)
    p.add_argument("data", help="ingested HDF5 file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = _add(sub, "models", "list the model zoo (name, parameters, input size, normalisation)",
             "deepage models --json", _cmd_models)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = _add(sub, "train", "train a model from a YAML config, key=value overrides following",
             "deepage train --config configs/mobilenet_v2_dex.yaml max_minutes=30 model=resnet18",
             _cmd_train, lazy_epilog=_train_epilog)
    p.add_argument("--config", default=None, help="YAML config (see configs/); None: the code defaults")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="run folder to resume (its last.pt)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (keys below)")

    p = _add(sub, "evaluate", "evaluate a checkpoint on a split: metrics.json, predictions.csv, plots, report.md",
             "deepage evaluate runs/mobilenet_v2_dex/best.pt --data work/utk128.h5 --split test", _cmd_evaluate)
    p.add_argument("checkpoint", help="a deepage checkpoint (.pt), or an .onnx file from deepage export (float "
                   "or int8: what ships is scored as it answers)")
    p.add_argument("--data", required=True, help="ingested HDF5 file (with a saved split, else all is used)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"], help="which images")
    p.add_argument("--out", default=None, help="output folder (None: eval-SPLIT beside the checkpoint)")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--tta", action="store_true", help="average with the mirrored image")
    p.add_argument("--adult-age", type=int, default=None, metavar="AGE",
                   help="also score the minor/adult check at the operating point stored for AGE (deepage "
                   "calibrate): minors passed as adults, adults held as minors, unsure; ROC and PR of 'minor'")
    # const: deepage.degradations.DEFAULT_DEGRADATIONS (not imported: the parser loads no NumPy/OpenCV)
    p.add_argument("--degrade", nargs="?", const="noise,grey,sepia,cast,blur,down,jpeg", default=None,
                   metavar="NAME[=STRENGTH],...",
                   help="also score the split under each degradation (alone): noise=12 (sigma, grey levels), grey, "
                   "sepia, cast=0.15 (channel gain), blur=2 (sigma, px), down=50 (px side), jpeg=15 (quality); "
                   "given alone: all of them at these strengths")

    p = _add(sub, "calibrate", "choose the minor/adult check's two thresholds on P(age >= AGE) on a split (the "
             "validation one) and store them in the checkpoint",
             "deepage calibrate runs/mobilenet_v2_dex/best.pt --data work/utk128.h5 --split val --adult-age 18",
             _cmd_calibrate)
    p.add_argument("checkpoint", help="a deepage checkpoint (.pt), or an exported .onnx (an int8 graph gets its own "
                   "point, chosen on its own scores); rewritten in place unless -o is given")
    p.add_argument("--data", required=True, help="ingested HDF5 file with a saved split")
    p.add_argument("--split", default="val", choices=["train", "val", "test", "all"],
                   help="the images to choose on (all: a data set the model never trained on)")
    p.add_argument("--adult-age", type=int, default=18, metavar="AGE", help="a face is a minor under AGE years")
    p.add_argument("--max-minors-passed", type=float, default=0.01, metavar="SHARE",
                   help="at most this share of the minors decided 'adult'")
    p.add_argument("--max-adults-held", type=float, default=0.05, metavar="SHARE",
                   help="at most this share of the adults decided 'minor'")
    p.add_argument("-o", "--output", default=None, help="write the calibrated checkpoint here instead")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--tta", action="store_true", help="score with the mirrored image too (then predict with --tta)")
    p.add_argument("--temperature", action="store_true",
                   help="first fit the DEX head's temperature on the split (the 10-90 %% interval then holds about "
                   "80 %% of the faces) and choose every stored operating point again on the tempered distributions")

    p = _add(sub, "ensemble", "join DEX models into one checkpoint that averages their age distributions (each "
             "member keeps its own crop, size and normalisation inside the graph), scored on a split",
             "deepage ensemble runs/a/best.pt runs/b/best.pt -o runs/ens.pt --data work/utk160.h5", _cmd_ensemble)
    p.add_argument("checkpoints", nargs="+", help="two or more DEX checkpoints of one split; the first one's "
                   "input (and widest crop) is the ensemble's")
    p.add_argument("-o", "--output", required=True, help="the ensemble checkpoint to write")
    p.add_argument("--data", default=None, help="ingested HDF5 at the first member's stored size: score the "
                   "ensemble on --split and store the metrics in it")
    p.add_argument("--split", default="val", choices=["train", "val", "test", "all"],
                   help="the split --data scores it on (default val)")
    # checkpoint.WEIGHT_STORAGES, written out: importing deepage.checkpoint would load numpy for --help
    p.add_argument("--weights", default="float16", choices=["float32", "float16", "int8"],
                   help="how the weights are stored: float16 (default, half the file of float32) or int8 "
                   "(convolution and linear weights with a scale per output channel, the rest float16: about a "
                   "quarter; they load as float32, and --data scores them as stored)")
    p.add_argument("--antialias", action="store_true", help="resize the other members' inputs from the first's "
                   "with antialiasing (default: plain bilinear, as ensembles made before the option)")

    p = _add(sub, "compare", "leaderboard over run folders (markdown, CSV and a bar chart)",
             "deepage compare runs/* --out leaderboard", _cmd_compare)
    p.add_argument("runs", nargs="+", help="run folders (each with best.pt or eval-*/metrics.json)")
    p.add_argument("--out", default="leaderboard", help="output folder")

    p = _add(sub, "predict", "estimate ages in photos (files or folders): faces found, aligned, aged; answers are "
             "written as they are made, and a bar shows progress on a terminal",
             "deepage predict holiday/ --format csv -o ages.csv --adult-age 18\n"
             "resume:  deepage predict holiday/ --format csv -o ages.csv --skip-existing", _cmd_predict)
    p.add_argument("paths", nargs="*", help="image files and folders (searched recursively), or video files "
                   "(.mp4 .avi .mov .mkv .webm ...: faces tracked, one steady age per person)")
    p.add_argument("--model", default=None, help="checkpoint (.pt) or .onnx file (None: the bundled model)")
    p.add_argument("--format", default="table", choices=["table", "json", "csv"],
                   help="table: readable lines; json: one object per image per line; csv: one row per face")
    p.add_argument("-o", "--output", default=None, help="write the answers to this file (None: stdout)")
    p.add_argument("--skip-existing", action="store_true",
                   help="resume into --output: skip the images an earlier run already wrote there")
    p.add_argument("--annotate", default=None,
                   help="folder for copies with boxes and ages drawn (a video: the .mp4 to write)")
    p.add_argument("--no-detect", action="store_true", help="images are already face crops")
    p.add_argument("--explain", action="store_true", help="AL models: draw the attended regions")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                   help="auto: ONNX Runtime for .onnx files, and for checkpoints when it is installed")
    p.add_argument("--tta", action="store_true", help="also read the mirror image and average (2x the model cost)")
    p.add_argument("--workers", type=_workers_arg, default="auto",
                   help="processes that decode and find faces (auto: one per core, at most one per image)")
    p.add_argument("--adult-age", type=_adult_age_arg, default="auto", metavar="AGE",
                   help="each face's P(age >= AGE) and decision adult/minor/unsure, at the operating point "
                   "stored with the model for AGE (deepage calibrate); auto: 18 when the model has one; off")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="answer on Ray actors (needs the 'ray' extra), the same rows: alone, a Ray on this "
                   "machine; 'auto' or ray://HOST:PORT, that cluster (files readable from every node)")
    v = p.add_argument_group("video (deepage predict clip.mp4 --annotate out.mp4 --tracks tracks.csv)")
    v.add_argument("--every", type=int, default=1, metavar="N", help="videos: read every N-th frame")
    v.add_argument("--camera", type=int, default=None, metavar="INDEX", help="read this camera (Ctrl-C ends)")
    v.add_argument("--tracks", default=None, metavar="FILE",
                   help="videos: write one row per person (track) here, CSV (.csv) or JSON lines")
    v.add_argument("--max-missed", type=int, default=None, metavar="K",
                   help="videos: a track ends after K processed frames without its face (default 10)")

    p = _add(sub, "export", "export a checkpoint to ONNX (dynamic batch axis, the model's spec in the file), "
             "checked against PyTorch before it is written; needs the 'onnx' extra",
             "deepage export deepage/assets/default_model.pt -o model.onnx", _cmd_export)
    p.add_argument("checkpoint", help="a deepage checkpoint (.pt)")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--int8", default=None, metavar="DATA.h5", help="quantise to int8 arithmetic (faster on some "
                   "CPUs: 1.75x on AVX2, 1.2-1.3x on AVX-512 VNNI, none on AMX), calibrated on training images "
                   "of this ingested file; refused if the ages move more than half a year on them")
    p.add_argument("--int8-images", type=int, default=512,
                   help="calibration images (default 512: with 256 the bundled four-member ensemble's ages moved "
                        "0.50 years and the graph was refused)")
    p.add_argument("--weights", default="float32", choices=["float32", "int8"],
                   help="a float graph's weights: float32 (default) or int8, one scale per output channel, "
                        "turned back into float32 when the graph is loaded: about a quarter of the file and "
                        "the answers of a checkpoint stored with `deepage ensemble --weights int8`")

    p = _add(sub, "serve", "HTTP service: a web page at /, POST /predict, GET /healthz (needs the 'serve' extra)",
             "deepage serve --port 8000 --model model.onnx", _cmd_serve)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--model", default=None, help="checkpoint (.pt) or .onnx file (None: the bundled model)")
    p.add_argument("--max-concurrency", type=int, default=64, help="requests admitted at once; more get 503")
    p.add_argument("--workers", type=int, default=1, help="inference threads")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a request gets 504")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="larger uploads get 413")
    p.add_argument("--max-uploads", type=int, default=64, help="request bodies received at once; more get 503")
    p.add_argument("--upload-timeout", type=float, default=20.0,
                   help="seconds a client has to send its whole body; a slower one gets 408")

    _add(sub, "demo", "find the face in a bundled photo and print its age", "deepage demo", _cmd_demo)
    return parser


_EXTRAS = {"fastapi": "serve", "starlette": "serve", "uvicorn": "serve", "multipart": "serve",
           "python_multipart": "serve", "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx",
           "ray": "ray", "pyarrow": "ray"}
"""Top-level module → the extra of pyproject.toml that installs it."""


def _missing_module(exc: ImportError) -> tuple[str, int]:
    """One line for an ImportError: the extra to install when the module belongs to one."""
    module = (getattr(exc, "name", None) or "").split(".")[0]
    if module in _EXTRAS:
        extra = _EXTRAS[module]
        return f"this needs the '{extra}' extra ({module} is not installed): pip install 'deepage[{extra}]'", 1
    return f"{_one_line(exc)} (a dependency is missing or broken: pip install --force-reinstall deepage)", 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; the library's errors reach the user as one line on stderr (exit status 2 for bad
    input, 1 for a missing extra or a failure at run time). ``DEEPAGE_TRACEBACK=1`` shows the traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        if os.environ.get("DEEPAGE_TRACEBACK") == "1":
            raise
        if isinstance(exc, ImportError):
            message, status = _missing_module(exc)
        elif isinstance(exc, (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                              ValueError)) or type(exc).__name__ == "DecompressionBombError":  # Pillow's: bad input
            message, status = _one_line(exc), 2
        elif isinstance(exc, (RuntimeError, OSError)):
            message, status = _one_line(exc), 1
        else:
            raise  # a bug, not a user's mistake: keep the traceback
        print(f"deepage {args.command}: error: {message}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print(f"deepage {args.command}: interrupted", file=sys.stderr)
        return 130
