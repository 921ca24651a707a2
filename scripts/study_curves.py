"""Validation accuracy and MAE against CPU minutes of training, one line per run (issue 9's backbone study).

    python scripts/study_curves.py runs/study/* --out docs/results/study/curves.png

Reads each run folder's ``history.json`` (one row per epoch: ``train_seconds``, ``val_utk14_accuracy``,
``val_age_mae``...) and ``config.yaml``; the x axis is the training time the budget counts (validation
excluded). Also prints the rows as a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with history.json)")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    args = parser.parse_args()
    fig, (ax_acc, ax_mae) = plt.subplots(1, 2, figsize=(11, 4.2))
    print("| run | epoch | CPU min | img/s | val 14-cls | val 8-cls | val MAE | val CS@5 |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        history_file = run / "history.json"
        if not history_file.is_file():
            continue
        history = json.loads(history_file.read_text())
        config = yaml.safe_load((run / "config.yaml").read_text())
        minutes = [row["train_seconds"] / 60 for row in history]
        label = f"{run.name} ({config['model']}, {config.get('input_size')} px)"
        ax_acc.plot(minutes, [100 * row["val_utk14_accuracy"] for row in history], marker="o", label=label)
        ax_mae.plot(minutes, [row["val_age_mae"] for row in history], marker="o", label=label)
        for row, m in zip(history, minutes, strict=True):
            print(f"| {run.name} | {row['epoch']:.2f} | {m:.1f} | {row.get('train_img_per_s', '–')} | "
                  f"{100 * row['val_utk14_accuracy']:.1f} % | {100 * row['val_utk8_accuracy']:.1f} % | "
                  f"{row['val_age_mae']:.3f} | {100 * row['val_age_cs5']:.1f} % |")
    ax_acc.set(xlabel="CPU minutes of training", ylabel="validation 14-class accuracy (%)")
    ax_mae.set(xlabel="CPU minutes of training", ylabel="validation MAE (years)")
    for ax in (ax_acc, ax_mae):
        ax.grid(alpha=0.3)
    ax_mae.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
