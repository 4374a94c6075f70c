"""What a dataset holds, before any training: per class and per source, with the shortcuts it invites.

:func:`summarize` counts images, patients, sources, image sizes and near-duplicate groups per class, and cross-
tabulates classes by source and age group (adult / pediatric, where known from the source, see
:mod:`cxrscreen.data.sources.ages`): a class that comes from one source only, a source that holds one class only, or
an age group found in some classes only, lets a model learn the source or the age instead of the disease, so each is
warned about. :func:`save_plots` draws intensity histograms and sample grids per class.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from cxrscreen.data.dedup import DEFAULT_MAX_DISTANCE, near_duplicate_groups
from cxrscreen.data.imageio import load_xray
from cxrscreen.data.sources import Dataset
from cxrscreen.data.sources.ages import ADULT, AGE_GROUPS, PEDIATRIC, age_group
from cxrscreen.data.transforms import resize
from cxrscreen.errors import CxrError
from cxrscreen.io_utils import atomic_write

Size = tuple[int, int]
HISTOGRAM_BINS = 64
LISTED_SOURCES = 8
# Pediatric shares of two classes this far apart (of images of known age) are warned about: at least a fifth of a
# class is then told from another by age alone.
AGE_SHARE_GAP = 0.2


@dataclass
class ClassSummary:
    """One class: counts, sizes (W, H) and near-duplicate groups (None when the images were not hashed)."""

    name: str
    images: int
    patients: int | None
    images_without_patient: int
    sources: dict[str, int]
    size_min: Size | None
    size_median: Size | None
    size_max: Size | None
    duplicate_groups: int | None
    images_in_duplicate_groups: int | None


@dataclass
class DataSummary:
    classes: list[ClassSummary]
    by_source: dict[str, dict[str, int]]
    ages_by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    ages_by_class: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    description: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """The summary as printed by ``cxrscreen data summary``."""
        rows = [
            [
                c.name,
                str(c.images),
                format_patients(c),
                str(len(c.sources)),
                " / ".join(format_size(s) for s in (c.size_min, c.size_median, c.size_max)) if c.images else "-",
                "-" if c.duplicate_groups is None else f"{c.duplicate_groups} ({c.images_in_duplicate_groups} images)",
            ]
            for c in self.classes
        ]
        headers = ["class", "images", "patients", "sources", "size WxH min / median / max", "near-duplicate groups"]
        names = [c.name for c in self.classes]
        parts = [self.description, "", format_table(headers, rows), "", count_table("source", self.by_source, names)]
        if self.ages_by_source:
            parts += ["", "age groups (as far as each source tells; mixed: both, not told apart):",
                      count_table("source", self.ages_by_source, AGE_GROUPS), "",
                      count_table("class", self.ages_by_class, AGE_GROUPS)]
        if self.unreadable:
            parts += ["", f"{len(self.unreadable)} unreadable images, e.g. {self.unreadable[0]}"]
        parts += ["", *[f"warning: {w}" for w in self.warnings]] if self.warnings else []
        return "\n".join(parts)


def format_patients(row: ClassSummary) -> str:
    if row.patients is None:
        return "-"
    return f"{row.patients} (+{row.images_without_patient} unknown)" if row.images_without_patient else str(row.patients)


def format_size(size: Size | None) -> str:
    return "?" if size is None else f"{size[0]}x{size[1]}"


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned plain-text table."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def count_table(row_name: str, counts: Mapping[str, Mapping[str, int]], columns: Sequence[str]) -> str:
    """A table of ``counts[row][column]`` (0 where absent), one row per key of ``counts``."""
    rows = [[row, *[str(values.get(c, 0)) for c in columns]] for row, values in counts.items()]
    return format_table([row_name, *columns], rows)


def image_size(path: str | os.PathLike) -> Size | None:
    """(width, height) from the file's header, without decoding the pixels; None when unreadable."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError):
        pass
    try:
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True)
        return int(header.Columns), int(header.Rows)
    except Exception:  # noqa: BLE001  (any failure means: size unknown, reported as unreadable)
        return None


def size_range(sizes: list[Size]) -> tuple[Size | None, Size | None, Size | None]:
    """Smallest, median and largest size by pixel count."""
    if not sizes:
        return None, None, None
    ordered = sorted(sizes, key=lambda s: (s[0] * s[1], s))
    return ordered[0], ordered[len(ordered) // 2], ordered[-1]


def confounding_warnings(by_source: Mapping[str, Mapping[str, int]], classes: list[str]) -> list[str]:
    """Warnings for classes from one source only and sources with one class only."""
    warnings = []
    if len(by_source) > 1:
        for name in classes:
            sources = [s for s, counts in by_source.items() if counts.get(name)]
            if len(sources) == 1:
                warnings.append(f"class {name} comes from one source only ({sources[0]}): "
                                "a model can learn the source instead of the class")
    single = [(s, next(iter(c))) for s, c in by_source.items() if len(c) == 1]
    if single and len(classes) > 1:
        listed = ", ".join(f"{s} ({c})" for s, c in single[:LISTED_SOURCES])
        more = f" and {len(single) - LISTED_SOURCES} more" if len(single) > LISTED_SOURCES else ""
        warnings.append(f"{len(single)} of {len(by_source)} sources hold one class only (confounded): {listed}{more}")
    return warnings


def age_warnings(ages_by_class: Mapping[str, Mapping[str, int]]) -> list[str]:
    """A warning when the share of pediatric images (of those whose age is known) differs much between classes."""
    known = {name: counts.get(ADULT, 0) + counts.get(PEDIATRIC, 0) for name, counts in ages_by_class.items()}
    shares = {name: ages_by_class[name].get(PEDIATRIC, 0) / n for name, n in known.items() if n}
    if len(shares) < 2 or max(shares.values()) - min(shares.values()) < AGE_SHARE_GAP:
        return []
    ordered = sorted(shares, key=lambda name: -shares[name])
    listed = ", ".join(f"{name} {shares[name]:.0%} of {known[name]}" for name in ordered)
    unknown = [name for name in ages_by_class if name not in shares]
    tail = f" ({', '.join(unknown)}: age unknown)" if unknown else ""
    return [f"pediatric share of each class's images of known age: {listed}{tail}: "
            "a model can learn the age instead of the class"]


def cross_table(rows: list[str], columns: list[str]) -> dict[str, dict[str, int]]:
    """``{row: {column: count}}`` of paired labels, rows with most images first."""
    table: dict[str, Counter] = {}
    for row, column in zip(rows, columns):
        table.setdefault(row, Counter())[column] += 1
    return {row: dict(counts) for row, counts in sorted(table.items(), key=lambda item: -sum(item[1].values()))}


def duplicate_counts(
    dataset: Dataset, hashes: Mapping[str, str], max_distance: float
) -> tuple[list[tuple[int, int]], list[str]]:
    """Per class (groups touching it, images of it in groups), and warnings for groups across classes or sources."""
    hashed = [i for i, r in enumerate(dataset.records) if r.path in hashes]
    found = near_duplicate_groups([hashes[dataset.records[i].path] for i in hashed], max_distance)
    groups = [[hashed[k] for k in group] for group in found]
    per_class = []
    for index in range(len(dataset.classes)):
        touching = [[i for i in g if dataset.targets[i] == index] for g in groups]
        per_class.append((sum(1 for t in touching if t), sum(len(t) for t in touching)))
    warnings = []
    across_classes = sum(1 for g in groups if len({int(dataset.targets[i]) for i in g}) > 1)
    if across_classes:
        warnings.append(f"{across_classes} near-duplicate groups hold images of different classes "
                        "(same picture, two labels)")
    across_sources = Counter(" + ".join(sorted({dataset.records[i].source.split("/")[0] for i in g})) for g in groups)
    for sources, n in across_sources.most_common():
        if "+" in sources:
            warnings.append(f"{n} near-duplicate groups span collections {sources} (the same pictures in both)")
    return per_class, warnings


def summarize(
    dataset: Dataset, hashes: Mapping[str, str] | None = None, max_distance: float = DEFAULT_MAX_DISTANCE
) -> DataSummary:
    """Summary of ``dataset``; near-duplicate groups only when ``hashes`` (record path -> pHash) are given."""
    sizes = [image_size(r.path) for r in dataset.records]
    duplicates, duplicate_warnings = (None, []) if hashes is None else duplicate_counts(dataset, hashes, max_distance)
    classes = []
    for index, name in enumerate(dataset.classes):
        members = np.flatnonzero(dataset.targets == index)
        records = [dataset.records[i] for i in members]
        patients = {r.group_key for r in records if r.patient_id}
        class_sizes = [sizes[i] for i in members if sizes[i] is not None]
        classes.append(
            ClassSummary(
                name,
                len(records),
                len(patients) if patients else None,
                sum(1 for r in records if not r.patient_id) if patients else 0,
                dict(Counter(r.source for r in records).most_common()),
                *size_range(class_sizes),
                *(duplicates[index] if duplicates else (None, None)),
            )
        )
    class_names = [dataset.classes[target] for target in dataset.targets]
    sources = [record.source for record in dataset.records]
    groups = [age_group(record) for record in dataset.records]
    by_source = cross_table(sources, class_names)
    ages = cross_table(class_names, groups)
    ages_by_class = {name: ages.get(name, {}) for name in dataset.classes}  # in the task's class order
    warnings = confounding_warnings(by_source, list(dataset.classes)) + age_warnings(ages_by_class)
    unreadable = [r.path for r, s in zip(dataset.records, sizes) if s is None]
    return DataSummary(classes, by_source, cross_table(sources, groups), ages_by_class, warnings + duplicate_warnings,
                       unreadable, dataset.describe())


def sample_indices(dataset: Dataset, class_index: int, count: int, seed: int) -> np.ndarray:
    members = np.flatnonzero(dataset.targets == class_index)
    return np.random.default_rng(seed).permutation(members)[:count]


def readable_images(dataset: Dataset, indices: np.ndarray) -> list[np.ndarray]:
    """Decoded X-rays (float32 (H, W) in [0, 1]) of ``records[indices]``; unreadable ones are skipped."""
    images = []
    for index in indices:
        try:
            images.append(load_xray(dataset.records[index].path))
        except CxrError:
            continue
    return images


def save_figure(figure, path: Path) -> Path:
    with atomic_write(path, "wb") as fh:
        figure.savefig(fh, format="png", dpi=100)
    return path


def save_plots(
    dataset: Dataset, out_dir: str | os.PathLike, per_class: int = 16, histogram_images: int = 100, seed: int = 0
) -> list[Path]:
    """Write ``intensity_histograms.png`` (mean pixel histogram per class) and ``samples_<class>.png`` (a grid of
    ``per_class`` random images per class) into ``out_dir``; returns the files written."""
    from matplotlib.figure import Figure

    out = Path(out_dir)
    written = []
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    for index, name in enumerate(dataset.classes):
        images = readable_images(dataset, sample_indices(dataset, index, histogram_images, seed))
        if images:
            histogram = np.mean([np.histogram(image, bins=edges, density=True)[0] for image in images], axis=0)
            axes.plot((edges[:-1] + edges[1:]) / 2, histogram, label=f"{name} ({len(images)} images)")
    axes.set_xlabel("pixel intensity (0 = black, 1 = white)")
    axes.set_ylabel("density (mean over images)")
    axes.set_title("Intensity histograms per class")
    axes.legend()
    written.append(save_figure(figure, out / "intensity_histograms.png"))
    for index, name in enumerate(dataset.classes):
        images = readable_images(dataset, sample_indices(dataset, index, per_class, seed))
        side = max(1, int(np.ceil(np.sqrt(len(images)))))
        figure = Figure(figsize=(2 * side, 2 * side + 0.4))
        figure.suptitle(f"{name}: {len(images)} random images")
        for k, image in enumerate(images):
            axes = figure.add_subplot(side, side, k + 1)
            axes.imshow(resize(image, 128), cmap="gray", vmin=0, vmax=1)
            axes.axis("off")
        written.append(save_figure(figure, out / f"samples_{name}.png"))
    return written
