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


def _intro(metrics: dict) -> list[str]:
    """Title, model, data and warnings."""
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
    lines += [f"> **Warning:** {w}" for w in metrics.get("warnings", [])]
    if metrics.get("warnings"):
        lines.append("")
    return lines


def _headline_table(metrics: dict, schemes: list[str]) -> list[str]:
    rows = []
    for s in schemes:
        m = metrics[s]
        rows.append([f"{s} ({len(m['class_names'])} classes)", fmt_pct(m["accuracy"]),
                     fmt_pct(m["balanced_accuracy"]), fmt_pct(m["one_off"]), fmt_num(m["macro_f1"], 3),
                     fmt_num(m["macro_auc"], 3), fmt_num(m["ece"], 3)])
    if not rows:
        return []
    return _table(["scheme", "accuracy", "balanced acc.", "one-off", "macro F1", "macro AUC", "ECE"], rows) + [""]


def _age_section(a: dict) -> list[str]:
    """Exact-age errors, the interval's coverage and the CS@k curve."""
    lines = [
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
    return lines + [""]


def _speed_line(speed: dict) -> list[str]:
    if not speed:
        return []
    return [
        f"Inference: {fmt_num(speed.get('images_per_second'), 1)} images/s on {speed.get('device')} "
        f"(batch {speed.get('batch_size')}, threads {speed.get('threads')}, "
        f"flip TTA {'on' if speed.get('tta_flip') else 'off'}; includes batch preparation).",
        "",
    ]


def _per_class_section(scheme: str, m: dict) -> list[str]:
    rows = [[n, str(c["support"]), fmt_num(c["precision"], 3), fmt_num(c["recall"], 3), fmt_num(c["f1"], 3),
             fmt_num(c["auc"], 3)] for n, c in m["per_class"].items()]
    notes = ["Macro means are over the classes present in the truth or the predictions "
             "(as scikit-learn's classification report)."]
    if m.get("auc_excluded"):
        notes.append("No ROC curve (no positive or no negative sample), so left out of the macro AUC: "
                     + ", ".join(m["auc_excluded"]) + ".")
    return [f"## Per class, {scheme}", ""] + _table(["class", "support", "precision", "recall", "F1", "AUC"], rows) \
        + ["", " ".join(notes), ""]


def _groups_sections(metrics: dict, schemes: list[str], has_age: bool) -> list[str]:
    """The breakdowns by gender and by race."""
    lines = []
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
    return lines


def _age_gate_section(g: dict) -> list[str]:
    """The minor/adult check: its stored operating point, its error rates, and the rates by group and age."""
    op = g["operating_point"]
    age = op["adult_age"]
    lines = [f"## Minor or adult (adult age {age})", "",
             f"Operating point stored with the model, chosen on split **{op.get('split') or '?'}** of "
             f"`{op.get('data') or '?'}` (split fingerprint `{op.get('data_fingerprint') or '?'}`, "
             f"{op['n_minors']} minors and {op['n_adults']} adults): `adult` when P(age ≥ {age}) > "
             f"{op['adult_threshold']:.4f}, `minor` when below {op['minor_threshold']:.4f}, "
             + ("no `unsure` band (the two targets cross: one threshold meets both); " if op.get("crossed")
                else "`unsure` between; ") +
             f"targets there: at most {fmt_pct(op['max_minors_passed'])} of the minors passed as adults, at most "
             f"{fmt_pct(op['max_adults_held'])} of the adults held as minors.", "",
             f"Here, on {g['n']} faces ({g['n_minors']} minors, {g['n_adults']} adults): **minors passed as "
             f"adults {fmt_pct(g['minors_passed_as_adults'])}**, **adults held as minors "
             f"{fmt_pct(g['adults_held_as_minors'])}**, unsure {fmt_pct(g['unsure'])} of all faces. Ranking "
             f"of \"minor\" without thresholds: ROC AUC {fmt_num(g['minor_roc_auc'], 3)}, average precision "
             f"{fmt_num(g['minor_average_precision'], 3)}.", ""]
    header = ["group", "n", "minors", "adults", "minors passed as adults", "adults held as minors", "unsure"]
    for key, title in (("by_gender", "gender"), ("by_race", "race")):
        rows = [[name, str(m["n"]), str(m["n_minors"]), str(m["n_adults"]), fmt_pct(m["minors_passed_as_adults"]),
                 fmt_pct(m["adults_held_as_minors"]), fmt_pct(m["unsure"])] for name, m in g.get(key, {}).items()]
        if rows:
            lines += [f"By {title}:", ""] + _table(header, rows) + [""]
    rows = [[band, str(m["n"]), fmt_pct(m["decided_adult"]), fmt_pct(m["unsure"]), fmt_pct(m["decided_minor"])]
            for band, m in g.get("by_age_band", {}).items()]
    if rows:
        lines += ["By true age (bands under the adult age: the `adult` share is the error; at or over it, the "
                  "`minor` share):", ""] + _table(["age", "n", "adult", "unsure", "minor"], rows) + [""]
    return lines


def _plots_section(plots: Sequence[str | Path], out_dir: Path) -> list[str]:
    if not plots:
        return []
    lines = ["## Plots", ""]
    for p in map(Path, plots):
        rel = p.relative_to(out_dir) if p.is_relative_to(out_dir) else p
        lines.append(f"- [{p.stem}]({rel.as_posix()})")
    return lines + [""]


def _provenance(metrics: dict) -> list[str]:
    fps = metrics.get("fingerprints", {})
    return [
        "## Provenance",
        "",
        f"- checkpoint: `{metrics.get('checkpoint', '?')}`",
        f"- split fingerprint of the data: `{fps.get('data')}`",
        f"- split fingerprint in the checkpoint: `{fps.get('checkpoint')}`"
        + (" (same split)" if fps.get("match") else " (**differs**)"),
        "",
    ]


def write_report(metrics: dict, out_dir: str | Path, plots: Sequence[str | Path] = ()) -> Path:
    """Write ``out_dir/report.md``: headline numbers, per-class tables per scheme, the breakdown by gender
    and race, links to the plots, checkpoint path and split fingerprints. Returns its path."""
    out_dir = Path(out_dir)
    schemes = _schemes(metrics)
    lines = _intro(metrics) + ["## Headline", ""] + _headline_table(metrics, schemes)
    if "age" in metrics:
        lines += _age_section(metrics["age"])
    lines += _speed_line(metrics.get("speed", {}))
    for s in schemes:
        lines += _per_class_section(s, metrics[s])
    lines += _groups_sections(metrics, schemes, "age" in metrics)
    if "age_gate" in metrics:
        lines += _age_gate_section(metrics["age_gate"])
    lines += _plots_section(plots, out_dir) + _provenance(metrics)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
