"""A small site for adaptation tests: ieee8023 images (real patients) listed in a CSV manifest, and a tiny parent."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cxrscreen.data.labels import LabelSet
from cxrscreen.data.sources import load_dataset


def write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id", "source"])
        writer.writerows([(p, label, patient, "site") for p, label, patient in rows])
    return path


@pytest.fixture(scope="session")
def manifest_writer():
    """``write(path, [(path, label, patient), ...]) -> path``: a CSV manifest of a site."""
    return write_manifest


@pytest.fixture(scope="session")
def ieee_rows(shared_data: Path) -> list[tuple[str, str, str]]:
    """(path, raw label, patient) of 24 COVID and 16 other ieee8023 frontal images, the first by patient."""
    dataset = load_dataset(shared_data / "covid-chestxray-dataset", LabelSet.parse("covid,other"))
    covid = [r for r in dataset.records if r.label == "covid"][:24]
    other = [r for r in dataset.records if r.label != "covid"][:16]
    return [(r.path, r.raw_label, r.patient_id or "") for r in covid + other]


@pytest.fixture(scope="session")
def tiny_parent(tmp_path_factory: pytest.TempPathFactory, checkpoint_factory) -> Path:
    """A 64 px EfficientNet-Lite0 parent with a random covid/normal/viral head (tests/conftest.py)."""
    return checkpoint_factory(tmp_path_factory.mktemp("parent") / "parent.pt")
