"""Leakage-free splits on real ieee8023 images (several per patient) plus re-encoded copies under other patients."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from PIL import Image

from cxrscreen.cli import main
from cxrscreen.data.dedup import DEFAULT_MAX_DISTANCE, hamming_distances, hash_files
from cxrscreen.data.labels import LabelSet
from cxrscreen.data.sources import load_dataset
from cxrscreen.data.splits import SPLIT_NAMES, load_split, make_split, save_split
from cxrscreen.errors import ConfigError, DatasetLayoutError


@pytest.fixture(scope="module")
def ieee_with_copies(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A manifest of 200 real ieee8023 frontal images with their patients, plus 20 resized JPEG copies of some of
    them filed under new patients (the same picture reaching a dataset twice)."""
    root = tmp_path_factory.mktemp("ieee_copies")
    dataset = load_dataset(shared_data / "covid-chestxray-dataset", LabelSet.parse("covid,other"))
    rows = [(r.path, r.raw_label, r.patient_id, r.source) for r in dataset.records[:200]]
    for k, (path, label, _, _) in enumerate(rows[::10]):
        with Image.open(path) as image:
            copy = image.convert("L").resize((image.width // 2, image.height // 2))
        buffer = io.BytesIO()
        copy.save(buffer, "JPEG", quality=80)
        (root / f"copy{k}.jpg").write_bytes(buffer.getvalue())
        rows.append((f"copy{k}.jpg", label, f"copy-patient-{k}", "copies"))
    with (root / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id", "source"])
        writer.writerows(rows)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def dataset_and_hashes(ieee_with_copies: Path):
    dataset = load_dataset(ieee_with_copies, LabelSet.parse("covid,other"))
    return dataset, hash_files(dataset.paths).hashes


def test_no_patient_or_picture_on_two_sides(dataset_and_hashes) -> None:
    dataset, hashes = dataset_and_hashes
    split = make_split(dataset, hashes, seed=3)
    side_of_patient: dict[str, set[str]] = {}
    for record, side in zip(dataset.records, split.assignment):
        side_of_patient.setdefault(record.group_key, set()).add(side)
    assert all(len(sides) == 1 for sides in side_of_patient.values())
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        ha = [hashes[dataset.records[i].path] for i in split.indices(a)]
        hb = [hashes[dataset.records[i].path] for i in split.indices(b)]
        assert hamming_distances(ha, hb).min() > DEFAULT_MAX_DISTANCE
    copies = [i for i, r in enumerate(dataset.records) if r.source == "copies"]
    assert len(copies) == 20
    for k, index in enumerate(copies):  # copy k was made from record 10 * k, filed under another patient
        assert split.assignment[index] == split.assignment[10 * k]


def test_split_is_stratified_and_seeded(dataset_and_hashes) -> None:
    dataset, hashes = dataset_and_hashes
    split = make_split(dataset, hashes, seed=0, fractions=(0.6, 0.2, 0.2))
    totals = dataset.class_counts()
    for side, fraction in zip(SPLIT_NAMES, (0.6, 0.2, 0.2)):
        for cls, n in split.counts()[side].items():
            assert abs(n / totals[cls] - fraction) < 0.08, (side, cls, n, totals[cls])
    assert (make_split(dataset, hashes, seed=0, fractions=(0.6, 0.2, 0.2)).assignment == split.assignment).all()
    assert (make_split(dataset, hashes, seed=1, fractions=(0.6, 0.2, 0.2)).assignment != split.assignment).any()


def test_split_file_round_trip(dataset_and_hashes, tmp_path: Path) -> None:
    dataset, hashes = dataset_and_hashes
    split = make_split(dataset, hashes, seed=5)
    path = save_split(split, tmp_path / "split.csv")
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert list(rows[0]) == ["path", "label", "class", "patient_id", "source", "split", "phash"]
    assert len(rows) == len(dataset)
    loaded = load_split(path, dataset)
    assert (loaded.assignment == split.assignment).all() and loaded.hashes == split.hashes
    part = loaded.part("test")
    assert len(part) == (split.assignment == "test").sum() and set(part.targets) <= {0, 1}


def test_split_file_errors(dataset_and_hashes, tmp_path: Path, small_radiography: Path) -> None:
    dataset, hashes = dataset_and_hashes
    path = save_split(make_split(dataset, hashes), tmp_path / "split.csv")
    other = load_dataset(small_radiography, LabelSet.parse("covid,other"))
    with pytest.raises(DatasetLayoutError, match="36 of the dataset's 36 images are not in this split file"):
        load_split(path, other)
    with pytest.raises(DatasetLayoutError, match="split file not found"):
        load_split(tmp_path / "none.csv", dataset)
    with pytest.raises(ConfigError, match="--fractions"):
        make_split(dataset, hashes, fractions=(0.5, 0.5, 0.5))


def test_cli_split_writes_a_reloadable_file(small_radiography: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "split.csv"
    assert main(["data", "split", "--data", str(small_radiography), "--out", str(out), "--seed", "2", "--quiet"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    dataset = load_dataset(small_radiography)
    assert sorted(set(load_split(out, dataset).assignment)) == sorted(SPLIT_NAMES)
    assert main(["data", "split", "--data", str(small_radiography), "--fractions", "0.9,0.2", "--quiet"]) == 2
