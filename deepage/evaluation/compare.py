"""A leaderboard over training run folders: markdown, CSV and a bar chart.

Each run folder must hold ``best.pt`` (model spec, weights); ``summary.json`` (written by the trainer)
gives the training time, and ``eval-test/metrics.json`` (from ``deepage evaluate``) the test metrics.
Without the latter, the validation metrics stored in ``best.pt`` are used and the row says ``val``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import load_checkpoint
from .plots import plot_leaderboard
from .report import DASH, fmt_num, fmt_pct

__all__ = ["RunRow", "read_run", "compare_runs", "COLUMNS"]

COLUMNS = [
    "run",
    "model",
    "head",
    "input size",
    "metrics from",
    "14-class accuracy",
    "8-class accuracy",
    "MAE",
    "CS@5",
    "macro F1 (14)",
    "macro AUC (14)",
    "parameters",
    "training time",
    "inference img/s",
]
"""Leaderboard columns, in order (the markdown table and the CSV alike)."""


@dataclass
class RunRow:
    """One run's leaderboard entry; ``None`` where a value is not known."""

    run: str
    model: str
    head: str
    input_size: int | None
    source: str  # "test" or "val"
    acc14: float | None
    acc8: float | None
    mae: float | None
    cs5: float | None
    macro_f1_14: float | None
    macro_auc_14: float | None
    parameters: int
    train_seconds: float | None
    images_per_second: float | None

    def csv_values(self) -> list:
        return [
            self.run,
            self.model,
            self.head,
            self.input_size,
            self.source,
            self.acc14,
            self.acc8,
            self.mae,
            self.cs5,
            self.macro_f1_14,
            self.macro_auc_14,
            self.parameters,
            self.train_seconds,
            self.images_per_second,
        ]

    def markdown_values(self) -> list[str]:
        return [
            self.run,
            self.model,
            self.head,
            DASH if self.input_size is None else str(self.input_size),
            self.source,
            fmt_pct(self.acc14),
            fmt_pct(self.acc8),
            fmt_num(self.mae),
            fmt_pct(self.cs5),
            fmt_num(self.macro_f1_14, 3),
            fmt_num(self.macro_auc_14, 3),
            f"{self.parameters / 1e6:.2f} M",
            _duration(self.train_seconds),
            fmt_num(self.images_per_second, 1),
        ]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _parameter_count(state_dict: dict) -> int:
    """Number of values in the state dict's tensors, batch-norm running statistics left out."""
    return int(
        sum(t.numel() for k, t in state_dict.items() if hasattr(t, "numel") and not k.endswith(_BUFFERS))
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc})") from exc


def _get(d: dict, *keys: str) -> float | None:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return None if d is None else float(d)


def read_run(run_dir: str | Path) -> RunRow:
    """The leaderboard entry of one run folder (``best.pt`` required)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} not found")
    best = run_dir / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"run folder {run_dir} has no best.pt: not a finished training run")
    ckpt = load_checkpoint(best)
    spec = ckpt["spec"]
    summary = _read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
    test_file = run_dir / "eval-test" / "metrics.json"
    if test_file.is_file():
        metrics, source = _read_json(test_file), "test"
    else:
        metrics, source = ckpt.get("metrics") or {}, "val"
    speed = _get(metrics, "speed", "images_per_second") if source == "test" else None
    return RunRow(
        run=run_dir.resolve().name,
        model=str(spec.get("name")),
        head=str(spec.get("head"))
        + (f" ({spec['scheme']})" if spec.get("head") == "classes" and spec.get("scheme") else ""),
        input_size=(spec.get("preprocessing") or {}).get("input_size"),
        source=source,
        acc14=_get(metrics, "utk14", "accuracy"),
        acc8=_get(metrics, "utk8", "accuracy"),
        mae=_get(metrics, "age", "mae"),
        cs5=_get(metrics, "age", "cs5"),
        macro_f1_14=_get(metrics, "utk14", "macro_f1"),
        macro_auc_14=_get(metrics, "utk14", "macro_auc"),
        parameters=_parameter_count(ckpt["state_dict"]),
        train_seconds=_get(summary, "train_seconds"),
        images_per_second=speed,
    )


def _sort_key(r: RunRow) -> tuple:
    # Highest 14-class accuracy first; runs without it last, then by 8-class accuracy, then lowest MAE.
    return (
        r.acc14 is None,
        -(r.acc14 or 0.0),
        r.acc8 is None,
        -(r.acc8 or 0.0),
        r.mae is None,
        r.mae or 0.0,
        r.run,
    )


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path = "leaderboard") -> str:
    """Leaderboard of ``run_dirs`` sorted by 14-class accuracy; writes ``leaderboard.md``, ``leaderboard.csv``
    and ``leaderboard.png`` into ``out_dir`` and returns the markdown table. Missing values show as "—"
    (empty in the CSV); the "metrics from" column says whether test or validation metrics were used."""
    if not run_dirs:
        raise ValueError("no run folders given")
    rows = sorted((read_run(d) for d in run_dirs), key=_sort_key)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(r.markdown_values()) + " |" for r in rows]
    table = "\n".join(lines)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    note = (
        "\n\n'metrics from' = test: `eval-test/metrics.json` of `deepage evaluate`; val: the validation "
        "metrics stored in best.pt (not held-out test numbers). Training time from summary.json; "
        "inference speed from the test evaluation.\n"
    )
    (out / "leaderboard.md").write_text("# Leaderboard\n\n" + table + note)
    with open(out / "leaderboard.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow(["" if v is None else v for v in r.csv_values()])
    plot_leaderboard(
        [f"{r.run} ({r.source})" for r in rows],
        [r.acc14 for r in rows],
        [r.acc8 for r in rows],
        [r.mae for r in rows],
        out / "leaderboard.png",
    )
    return table
