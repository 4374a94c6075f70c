"""Plain-text tables of an evaluation, as ``cxrscreen evaluate`` prints them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from cxrscreen.metrics.classification import PER_CLASS_METRICS, Interval

if TYPE_CHECKING:
    from cxrscreen.evaluation.results import CollectionResult, EvaluationResult


# adapt.json's before/after figures as rows (label, key), for the printed table and the HTML report alike.
ADAPT_FIGURE_ROWS = (("AUROC {positive}-vs-rest", "auroc"), ("sensitivity (argmax)", "sensitivity"),
                     ("specificity (argmax)", "specificity"), ("accuracy", "accuracy"), ("macro-F1", "macro_f1"))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def format_value(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.3f}"


def format_interval(interval: Interval | None) -> str:
    """``0.912 [0.899, 0.925]``; ``-`` where undefined."""
    if interval is None or not np.isfinite(interval.value):
        return "-"
    if not np.isfinite(interval.low):
        return format_value(interval.value)
    return f"{interval.value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def format_drop(interval: Interval | None) -> str:
    """A drop (first collection minus this one) with its sign: ``+0.310 [0.250, 0.370]``."""
    if interval is None or not np.isfinite(interval.value):
        return "-"
    bounds = f" [{interval.low:+.3f}, {interval.high:+.3f}]" if np.isfinite(interval.low) else ""
    return f"{interval.value:+.3f}{bounds}"


def collection_report(result: "CollectionResult") -> str:
    """What one collection's evaluation found: counts, overall and per-class metrics, COVID-vs-rest, calibration."""
    lines = [f"== {result.name} ({result.kind}): {result.n_evaluated} images evaluated of {result.n_listed} listed"]
    if result.left_out_near_duplicates is not None:
        lines.append(f"left out {result.left_out_near_duplicates} near-duplicate(s) of the model's training images "
                     f"(pHash distance <= {result.dedup_distance} of 64 bits)")
    if result.unreadable:
        lines.append(f"skipped {len(result.unreadable)} unreadable image(s), e.g. {result.unreadable[0][0]}: {result.unreadable[0][1]}")
    if result.without_class:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(result.without_class.items()))
        lines.append(f"no model class (COVID-vs-rest only): {counts}")
    if result.unknown_labels:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(result.unknown_labels.items()))
        lines.append(f"unknown labels, not evaluated: {counts} (--label-map LABEL=CLASS maps one onto a class)")
    if result.flagged_out_of_distribution:
        lines.append(f"{result.flagged_out_of_distribution} image(s) flagged as out of distribution by the model's guard (still scored)")
    lines.extend(f"note: {note}" for note in result.notes)
    m = result.multiclass
    if m is not None:
        lines.append("")
        lines.append(format_table(
            ["metric (95% CI)", "value"],
            [["accuracy", format_interval(m.accuracy)], ["balanced accuracy", format_interval(m.balanced_accuracy)],
             ["macro-F1", format_interval(m.macro_f1)], ["macro-AUROC", format_interval(m.macro_auroc)]],
        ))
        lines.append("")
        rows = [[name, str(m.support[name]), *(format_interval(m.per_class[name][k]) for k in PER_CLASS_METRICS)]
                for name in m.classes]
        lines.append(format_table(["class", "n", *PER_CLASS_METRICS], rows))
        lines.append("")
        lines.append(format_table(["true \\ predicted", *m.classes],
                                  [[name, *map(str, m.confusion[i])] for i, name in enumerate(m.classes)]))
    b = result.covid_vs_rest
    if b is not None:
        lines.append("")
        lines.append(f"COVID-vs-rest ({b.n_positive} covid of {b.n_images}): AUROC {format_interval(b.auroc)}, "
                     f"sensitivity {format_interval(b.sensitivity)}, specificity {format_interval(b.specificity)}")
    c = result.calibration
    if c is not None:
        lines.append(f"calibration: ECE {format_value(c.ece_before)} at T=1 -> {format_value(c.ece_after)} at "
                     f"T={c.temperature:.2f}; Brier {format_value(c.brier_before)} -> {format_value(c.brier_after)}")
    if result.by_source:
        lines.append("")
        lines.append(source_table(result))
    return "\n".join(lines)


def source_table(result: "CollectionResult") -> str:
    """Per source: images, accuracy, and the COVID-vs-rest view inside the source (AUROC only where it has both)."""
    rows = []
    for s in result.by_source:
        b = s.covid_vs_rest
        rows.append([
            s.source,
            str(s.n_images),
            "-" if b is None else str(b.n_positive),
            format_interval(s.accuracy),
            "-" if b is None else format_interval(b.auroc),
            "-" if b is None else format_interval(b.sensitivity),
            "-" if b is None else format_interval(b.specificity),
        ])
    return format_table(["source", "n", "covid", "accuracy", "AUROC covid-vs-rest", "sensitivity", "specificity"], rows)


def comparison_table(result: "EvaluationResult") -> str:
    """Per collection: COVID-vs-rest AUROC, sensitivity, specificity and macro-F1 with CIs, and each one's drop
    from the first collection."""
    rows = []
    for row in result.comparison():
        rows.append([
            row["name"],
            str(row["images"]),
            *(format_interval(row[m]) for m in ("auroc", "sensitivity", "specificity", "macro_f1")),
            format_drop(row["auroc_drop"]),
            format_drop(row["macro_f1_drop"]),
        ])
    headers = ["collection", "n", "AUROC covid-vs-rest", "sensitivity", "specificity", "macro-F1", "AUROC drop", "macro-F1 drop"]
    return format_table(headers, rows)


def evaluation_report(result: "EvaluationResult") -> str:
    """The whole printed report: every collection, then the comparison table when there are external ones."""
    parts = [f"model {result.model_name} ({result.model}); classes {', '.join(result.classes)}; "
             f"95% CIs from {result.n_resamples} bootstrap resamples (seed {result.seed})"]
    parts.extend(collection_report(c) for c in result.collections)
    if result.external:
        parts.append("== internal vs external (drop = first collection minus this one)\n" + comparison_table(result))
    if result.out_dir is not None:
        parts.append(f"wrote {result.out_dir / 'metrics.json'} and figures")
    return "\n\n".join(parts)
