"""Leaderboard over run folders: columns, order, markers for validation metrics, missing values, errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from deepage.checkpoint import load_checkpoint, save_checkpoint
from deepage.cli import main
from deepage.evaluation.compare import COLUMNS, compare_runs


def _copy_run(tiny_checkpoint: Path, dest: Path) -> Path:
    shutil.copytree(Path(tiny_checkpoint).parent, dest, ignore=shutil.ignore_patterns("eval-*"))
    return dest


@pytest.fixture()
def runs(tiny_checkpoint, tmp_path) -> list[Path]:
    """Three runs: 'tested' (eval-test metrics, 14-class 40 %), 'val_only' (validation metrics in best.pt,
    14-class 60 %, no summary.json) and 'no_acc14' (no 14-class accuracy at all)."""
    tested = _copy_run(tiny_checkpoint, tmp_path / "tested")
    (tested / "eval-test").mkdir()
    (tested / "eval-test" / "metrics.json").write_text(
        json.dumps(
            {
                "n": 30,
                "utk14": {"accuracy": 0.4, "macro_f1": 0.25, "macro_auc": 0.8},
                "utk8": {"accuracy": 0.55},
                "age": {"mae": 6.5, "cs5": 0.45},
                "speed": {"images_per_second": 123.4},
            }
        )
    )
    summary = json.loads((tested / "summary.json").read_text())
    summary["train_seconds"] = 600.0
    (tested / "summary.json").write_text(json.dumps(summary))

    val_only = _copy_run(tiny_checkpoint, tmp_path / "val_only")
    ckpt = load_checkpoint(val_only / "best.pt")
    ckpt["metrics"] = {
        "n": 20,
        "utk14": {"accuracy": 0.6, "one_off": 0.9},
        "utk8": {"accuracy": 0.7},
        "age": {"mae": 5.0, "cs5": 0.5},
    }
    save_checkpoint(val_only / "best.pt", ckpt)
    (val_only / "summary.json").unlink()

    no_acc14 = _copy_run(tiny_checkpoint, tmp_path / "no_acc14")
    ckpt = load_checkpoint(no_acc14 / "best.pt")
    ckpt["metrics"] = {"n": 20, "utk8": {"accuracy": 0.99}}
    save_checkpoint(no_acc14 / "best.pt", ckpt)
    return [tested, no_acc14, val_only]


def test_compare_writes_sorted_table_csv_and_chart(runs, tiny_checkpoint, tmp_path):
    out = tmp_path / "board"
    table = compare_runs(runs, out_dir=out)
    lines = table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == COLUMNS
    for name in (
        "model",
        "head",
        "input size",
        "14-class accuracy",
        "8-class accuracy",
        "MAE",
        "CS@5",
        "macro F1 (14)",
        "macro AUC (14)",
        "parameters",
        "training time",
        "inference img/s",
    ):
        assert name in header
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[0] for r in body] == ["val_only", "tested", "no_acc14"]  # by 14-class accuracy, missing last
    row = dict(zip(header, body[1], strict=True))
    assert row["metrics from"] == "test" and row["14-class accuracy"] == "40.0 %" and row["MAE"] == "6.50"
    assert row["macro AUC (14)"] == "0.800" and row["inference img/s"] == "123.4"
    assert row["training time"] == "10.0 min" and row["model"] == "mobilenet_v2_tiny" and row["head"] == "dex"
    assert row["input size"] == "32"
    val = dict(zip(header, body[0], strict=True))
    assert val["metrics from"] == "val" and val["14-class accuracy"] == "60.0 %"
    assert val["macro F1 (14)"] == "—" and val["training time"] == "—" and val["inference img/s"] == "—"
    assert dict(zip(header, body[2], strict=True))["14-class accuracy"] == "—"

    state = load_checkpoint(tiny_checkpoint)["state_dict"]
    n_params = sum(
        t.numel()
        for k, t in state.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    with open(out / "leaderboard.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == COLUMNS
    assert [r["run"] for r in rows] == ["val_only", "tested", "no_acc14"]
    assert float(rows[1]["14-class accuracy"]) == pytest.approx(0.4)
    assert rows[0]["macro F1 (14)"] == "" and int(rows[0]["parameters"]) == n_params
    assert (out / "leaderboard.md").read_text().startswith("# Leaderboard")
    png = out / "leaderboard.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_bad_run_folder_is_named_in_the_error(runs, tmp_path, capsys):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"not_a_run has no best\.pt"):
        compare_runs([runs[0], empty], out_dir=tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="run folder .*missing not found"):
        compare_runs([tmp_path / "missing"], out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="no run folders"):
        compare_runs([], out_dir=tmp_path / "b")
    assert main(["compare", str(empty), "--out", str(tmp_path / "b")]) == 2
    assert "not_a_run has no best.pt" in capsys.readouterr().err


def test_cli_compare(runs, tmp_path, capsys):
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "lb")]) == 0
    assert "| val_only |" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "lb").iterdir()} == {
        "leaderboard.md",
        "leaderboard.csv",
        "leaderboard.png",
    }
