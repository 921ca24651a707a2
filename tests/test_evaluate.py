"""End-to-end evaluation of a tiny trained checkpoint: metrics.json, plots, report, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deepage.cli import main
from deepage.data.ingest import ingest
from deepage.data.loader import load_split
from deepage.evaluation.evaluate import evaluate_checkpoint

from .conftest import write_utk_folder

METRIC_KEYS = {
    "accuracy",
    "balanced_accuracy",
    "one_off",
    "macro_f1",
    "macro_auc",
    "weighted_f1",
    "macro_precision",
    "macro_recall",
    "weighted_precision",
    "weighted_recall",
    "per_class",
    "confusion_matrix",
    "class_names",
}
PLOTS = [
    "confusion_utk14.png",
    "confusion_utk8.png",
    "roc_utk14.png",
    "roc_utk8.png",
    "recall_utk14.png",
    "recall_utk8.png",
    "reliability_utk14.png",
    "reliability_utk8.png",
    "age_error.png",
]


@pytest.fixture(scope="module")
def evaluated(tiny_checkpoint, tiny_h5, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return evaluate_checkpoint(tiny_checkpoint, tiny_h5, split="test", out_dir=out, batch_size=7)


def test_metrics_json_has_every_group(evaluated, tiny_h5):
    m = json.loads((evaluated.out_dir / "metrics.json").read_text())
    n_test = len(load_split(tiny_h5, "test"))
    assert m["n"] == n_test  # batch 7 does not divide the split: the last partial batch is kept
    for scheme, C in (("utk14", 14), ("utk8", 8)):
        assert set(m[scheme]) >= METRIC_KEYS
        assert len(m[scheme]["confusion_matrix"]) == C
        assert sum(map(sum, m[scheme]["confusion_matrix"])) == n_test
        assert set(m[scheme]["per_class"]["1-5"]) == {"precision", "recall", "f1", "support", "auc"}
    assert {"mae", "cs5", "cs_curve"} <= set(m["age"]) and len(m["age"]["cs_curve"]) == 11
    assert 0 <= m["age"]["interval_coverage"] <= 1 and m["age"]["interval_width"] > 0  # a dex head: a distribution
    assert set(m["by_gender"]) <= {"male", "female", "unknown"}
    assert sum(g["n"] for g in m["by_gender"].values()) == n_test
    assert sum(g["n"] for g in m["by_race"].values()) == n_test
    assert {"utk14", "utk8", "age"} <= set(m["by_race"]["White"])
    assert m["speed"]["images_per_second"] > 0
    assert m["fingerprints"]["match"] is True
    assert m["fingerprints"]["data"] == m["fingerprints"]["checkpoint"]
    assert m["split"] == "test" and evaluated.warnings == []
    lines = (evaluated.out_dir / "predictions.csv").read_text().splitlines()
    assert len(lines) == n_test + 1 and lines[0].startswith("position,row,age_true,gender,race,age_pred")


def test_plots_and_report_are_written(evaluated):
    for name in PLOTS:
        path = evaluated.out_dir / name
        assert path.is_file() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (evaluated.out_dir / "report.md").read_text()
    acc = evaluated.metrics["utk14"]["accuracy"]
    assert f"{100 * acc:.1f} %" in report
    assert "By gender" in report and "By race" in report and "(confusion_utk14.png)" in report
    assert evaluated.metrics["fingerprints"]["data"] in report
    text = evaluated.summary_text()
    assert "utk14 accuracy" in text and "MAE" in text and str(evaluated.out_dir) in text


def test_unsplit_file_is_evaluated_whole_with_warnings(tiny_checkpoint, tmp_path):
    write_utk_folder(tmp_path / "faces", n=9, size=40, seed=3)
    ingest(tmp_path / "faces", tmp_path / "unsplit.h5", size=32, workers=1)
    result = evaluate_checkpoint(
        tiny_checkpoint, tmp_path / "unsplit.h5", split="test", out_dir=tmp_path / "e", plots=False
    )
    assert result.split == "all" and result.metrics["split_requested"] == "test"
    assert result.metrics["n"] == 9
    assert any("no saved split" in w for w in result.warnings)
    assert any("possible leakage" in w for w in result.warnings)
    assert "possible leakage" in (tmp_path / "e" / "report.md").read_text()


def test_cli_evaluate_default_folder_beside_checkpoint(tiny_checkpoint, tiny_h5, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(Path(tiny_checkpoint).parent, run)
    assert (
        main(
            [
                "evaluate",
                str(run / "best.pt"),
                "--data",
                str(tiny_h5),
                "--split",
                "val",
                "--batch-size",
                "32",
                "--tta",
            ]
        )
        == 0
    )
    out = run / "eval-val"
    assert (out / "metrics.json").is_file() and (out / "report.md").is_file()
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == len(load_split(tiny_h5, "val")) and m["speed"]["tta_flip"] is True
    assert "utk14 accuracy" in capsys.readouterr().out


def test_cli_evaluate_missing_checkpoint_is_a_clear_error(tiny_h5, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.pt"), "--data", str(tiny_h5)]) == 2
    assert "nope.pt not found" in capsys.readouterr().err


def test_classes_head_predictions_give_only_their_scheme(tmp_path):
    import numpy as np

    from deepage.evaluation.metrics import full_metrics
    from deepage.evaluation.plots import make_plots
    from deepage.evaluation.predictions import Predictions
    from deepage.evaluation.report import write_report

    rng = np.random.default_rng(0)
    ages = rng.integers(1, 90, 40)
    probs = rng.dirichlet(np.ones(8), 40)
    preds = Predictions(age_true=ages, age_pred=None, class_probs={"utk8": probs}, index=np.arange(40))
    metrics = full_metrics(preds, gender=ages % 2, race=ages % 5)
    metrics.update({"split": "test", "checkpoint": "x.pt"})
    assert set(metrics) == {"n", "utk8", "by_gender", "by_race", "split", "checkpoint"}
    plots = make_plots(preds, metrics, tmp_path)
    assert sorted(p.name for p in plots) == [
        "confusion_utk8.png",
        "recall_utk8.png",
        "reliability_utk8.png",
        "roc_utk8.png",
    ]
    report = write_report(metrics, tmp_path, plots).read_text()
    assert f"{100 * metrics['utk8']['accuracy']:.1f} %" in report and "MAE" not in report
