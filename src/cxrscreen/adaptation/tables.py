"""Plain-text tables of an adaptation, as ``cxrscreen adapt`` prints them (from the content of adapt.json)."""

from __future__ import annotations

from typing import Any

from cxrscreen.evaluation.tables import ADAPT_FIGURE_ROWS as FIGURE_ROWS
from cxrscreen.evaluation.tables import format_table


def format_figure(figures: dict[str, Any] | None, name: str) -> str:
    """``0.912 [0.899, 0.925]`` from adapt.json's ``name`` and ``name_ci``; ``-`` where undefined."""
    if not figures or figures.get(name) is None:
        return "-"
    low, high = figures.get(f"{name}_ci") or (None, None)
    return f"{figures[name]:.3f}" if low is None else f"{figures[name]:.3f} [{low:.3f}, {high:.3f}]"


def before_after_table(report: dict[str, Any]) -> str:
    positive = report["positive_class"]
    rows = [[label.format(positive=positive), format_figure(report["before"], key), format_figure(report["after"], key)]
            for label, key in FIGURE_ROWS]
    return format_table(["metric", "before (parent)", "after (out of fold)"], rows)


def source_table(report: dict[str, Any]) -> str:
    rows = [[row["source"], str(row["n"]), str(row["n_positive"]), format_figure(row.get("before"), "auroc"),
             format_figure(row.get("after"), "auroc")] for row in report["by_source"]]
    return format_table(["source", "n", report["positive_class"], "AUROC before", "AUROC after"], rows)


def curve_table(report: dict[str, Any]) -> str:
    rows = [[str(row["size"]), ", ".join(f"{c} {n:g}" for c, n in row["images_per_class"].items()),
             str(row["repeats"]), format_figure(row, "auroc")] for row in report["learning_curve"]]
    return format_table(["per class", "drawn (mean)", "repeats", "AUROC out of fold"], rows)


def adapt_report(report: dict[str, Any]) -> str:
    """Before/after table, threshold, learning curve and (with --by source) the per-source table."""
    images, positive = report["images"], report["positive_class"]
    flagged = report["ood_flagged"]
    threshold = report["threshold"]
    lines = [
        f"site: {', '.join(report['data'])}: {images['used']} images ({', '.join(f'{c} {n}' for c, n in images['per_class'].items())}); "
        f"left out {images['left_out_near_duplicates'] or 0} near-duplicate(s) of the parent's training images",
        f"parent: {report['parent']['name']} v{report['parent']['version']}; OOD guard flagged "
        + ("-" if flagged["count"] is None else f"{flagged['count']} ({flagged['share']:.1%})") + " of the site's images",
        f"folds: {report['folds']['k']} by {report['folds']['grouped_by']}; 95% bootstrap CIs resample patients",
        "",
        before_after_table(report),
        "",
        f"operating threshold p({positive}) >= {threshold['value']:.3f} (target sensitivity {threshold['target_sensitivity']:.0%}, "
        f"out of fold): sensitivity {format_figure(threshold, 'sensitivity')}, specificity {format_figure(threshold, 'specificity')}",
    ]
    if report["learning_curve"]:
        lines += ["", "learning curve:", curve_table(report)]
    if report["by_source"]:
        lines += ["", "by source:", source_table(report)]
    return "\n".join(lines)
