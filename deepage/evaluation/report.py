"""A short human-readable ``report.md`` from an evaluation's ``metrics.json`` dictionary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["headline", "write_report", "fmt_pct", "fmt_num"]

DASH = "—"


def fmt_pct(x: float | None, digits: int = 1) -> str:
    """``0.4637`` → ``"46.4 %"``; ``None`` → ``"—"``."""
    return DASH if x is None else f"{100 * x:.{digits}f} %"


def fmt_num(x: float | None, digits: int = 2) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def _schemes(metrics: dict) -> list[str]:
    return [k for k, v in metrics.items() if isinstance(v, dict) and "class_names" in v]


def headline(metrics: dict) -> str:
    """One line of the main numbers: accuracy per scheme, MAE and CS@5 where the model answers them."""
    parts = [f"{s} accuracy {fmt_pct(metrics[s]['accuracy'])}" for s in _schemes(metrics)]
    if "age" in metrics:
        parts.append(f"MAE {fmt_num(metrics['age']['mae'])} years")
        parts.append(f"CS@5 {fmt_pct(metrics['age']['cs5'])}")
    return ", ".join(parts)


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _group_row(name: str, m: dict, schemes: list[str], has_age: bool) -> list[str]:
    row = [name, str(m["n"])]
    for s in schemes:
        row += [
            fmt_pct(m[s]["accuracy"]) if s in m else DASH,
            fmt_num(m[s]["macro_f1"], 3) if s in m else DASH,
        ]
    if has_age:
        row += [
            fmt_num(m["age"]["mae"]) if "age" in m else DASH,
            fmt_pct(m["age"]["cs5"]) if "age" in m else DASH,
        ]
    return row


def write_report(metrics: dict, out_dir: str | Path, plots: Sequence[str | Path] = ()) -> Path:
    """Write ``out_dir/report.md``: headline numbers, per-class tables per scheme, the breakdown by gender
    and race, links to the plots, checkpoint path and split fingerprints. Returns its path."""
    out_dir = Path(out_dir)
    schemes = _schemes(metrics)
    has_age = "age" in metrics
    lines = [f"# Evaluation of `{metrics.get('checkpoint', '?')}`", ""]
    model = metrics.get("model", {})
    if model:
        lines.append(
            f"Model **{model.get('name')}** with a **{model.get('head')}** head, input "
            f"{model.get('input_size')} px."
        )
    lines += [
        f"Data `{metrics.get('data', '?')}`, split **{metrics.get('split', '?')}**, "
        f"**{metrics['n']}** images (none dropped).",
        "",
    ]
    for w in metrics.get("warnings", []):
        lines.append(f"> **Warning:** {w}")
    if metrics.get("warnings"):
        lines.append("")
    lines += ["## Headline", ""]
    head_rows = []
    for s in schemes:
        m = metrics[s]
        head_rows.append(
            [
                f"{s} ({len(m['class_names'])} classes)",
                fmt_pct(m["accuracy"]),
                fmt_pct(m["balanced_accuracy"]),
                fmt_pct(m["one_off"]),
                fmt_num(m["macro_f1"], 3),
                fmt_num(m["macro_auc"], 3),
                fmt_num(m["ece"], 3),
            ]
        )
    if head_rows:
        lines += _table(
            ["scheme", "accuracy", "balanced acc.", "one-off", "macro F1", "macro AUC", "ECE"], head_rows
        )
        lines.append("")
    if has_age:
        a = metrics["age"]
        lines += [
            f"Exact age: **MAE {fmt_num(a['mae'])} years**, CS@5 {fmt_pct(a['cs5'])}, "
            f"RMSE {fmt_num(a.get('rmse'))}, median error {fmt_num(a.get('median_ae'))}, "
            f"bias (predicted - true) {fmt_num(a.get('bias'))} years.",
            "",
        ]
        if a.get("interval_coverage") is not None:
            lines += [f"The reported interval (10th-90th percentile of the age distribution, meant to hold the "
                      f"true age 80 % of the time) held it for {fmt_pct(a['interval_coverage'])} of the faces; "
                      f"mean width {fmt_num(a['interval_width'])} years.", ""]
        lines += _table(
            ["k (years)"] + [str(k) for k in range(len(a["cs_curve"]))],
            [["CS@k"] + [fmt_pct(v, 0) for v in a["cs_curve"]]],
        )
        lines.append("")
    speed = metrics.get("speed", {})
    if speed:
        lines += [
            f"Inference: {fmt_num(speed.get('images_per_second'), 1)} images/s on {speed.get('device')} "
            f"(batch {speed.get('batch_size')}, threads {speed.get('threads')}, "
            f"flip TTA {'on' if speed.get('tta_flip') else 'off'}; includes batch preparation).",
            "",
        ]

    for s in schemes:
        m = metrics[s]
        lines += [f"## Per class, {s}", ""]
        rows = [
            [
                n,
                str(c["support"]),
                fmt_num(c["precision"], 3),
                fmt_num(c["recall"], 3),
                fmt_num(c["f1"], 3),
                fmt_num(c["auc"], 3),
            ]
            for n, c in m["per_class"].items()
        ]
        lines += _table(["class", "support", "precision", "recall", "F1", "AUC"], rows)
        notes = [
            "Macro means are over the classes present in the truth or the predictions "
            "(as scikit-learn's classification report)."
        ]
        if m.get("auc_excluded"):
            notes.append(
                "No ROC curve (no positive or no negative sample), so left out of the macro AUC: "
                + ", ".join(m["auc_excluded"])
                + "."
            )
        lines += ["", " ".join(notes), ""]

    for key, title in (("by_gender", "By gender"), ("by_race", "By race")):
        if key not in metrics:
            continue
        header = ["group", "n"]
        for s in schemes:
            header += [f"{s} acc.", f"{s} macro F1"]
        if has_age:
            header += ["MAE", "CS@5"]
        rows = [_group_row(g, gm, schemes, has_age) for g, gm in metrics[key].items()]
        lines += [f"## {title}", ""] + _table(header, rows) + [""]

    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            p = Path(p)
            rel = p.relative_to(out_dir) if p.is_relative_to(out_dir) else p
            lines.append(f"- [{p.stem}]({rel.as_posix()})")
        lines.append("")
    fps = metrics.get("fingerprints", {})
    lines += [
        "## Provenance",
        "",
        f"- checkpoint: `{metrics.get('checkpoint', '?')}`",
        f"- split fingerprint of the data: `{fps.get('data')}`",
        f"- split fingerprint in the checkpoint: `{fps.get('checkpoint')}`"
        + (" (same split)" if fps.get("match") else " (**differs**)"),
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
