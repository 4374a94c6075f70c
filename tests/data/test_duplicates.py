"""``cxrscreen data duplicates``: which images of one collection are already in another."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from cxrscreen.cli import main
from cxrscreen.data.dedup import DEFAULT_MAX_DISTANCE, hash_files, min_distances
from cxrscreen.data.overlap import PAIR_COLUMNS, Collection, collection_names, collection_overlap
from cxrscreen.data.records import Record
from subsets import link_subset


@pytest.fixture(scope="module")
def covid_db(radiography_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Radiography DB's COVID class whole, and a few images of its other classes (symlinks)."""
    root = tmp_path_factory.mktemp("db")
    link_subset(radiography_root, root, per_class=10_000, pattern="COVID/images/*.jpg")
    link_subset(radiography_root, root, per_class=20, pattern="Normal/images/*.jpg")
    return root


def test_finds_the_ieee8023_images_inside_the_radiography_database(covid_db: Path, shared_data: Path, tmp_path: Path,
                                                                   capsys) -> None:
    """The README's measured overlap: 249 of the 570 ieee8023 images are near-duplicates of DB COVID images."""
    ieee = shared_data / "covid-chestxray-dataset"
    out = tmp_path / "pairs.csv"
    assert main(["data", "duplicates", "--data", str(covid_db), "--data", str(ieee), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == PAIR_COLUMNS
    assert {(r["collection_a"], r["collection_b"]) for r in rows} == {(covid_db.name, "covid-chestxray-dataset")}
    duplicated = {r["path_b"] for r in rows}
    assert len(duplicated) == 249 and {r["class_a"] for r in rows} == {"covid"}
    # The same images as the nearest-neighbour distances of an all-pairs comparison say.
    ieee_files = sorted(str(p) for p in (ieee / "images").iterdir())
    ieee_hashes = hash_files(ieee_files).hashes
    db_hashes = list(hash_files(sorted(covid_db.glob("COVID/images/*.jpg"))).hashes.values())
    nearest = min_distances([ieee_hashes[p] for p in ieee_files], db_hashes)
    assert duplicated == {p for p, d in zip(ieee_files, nearest) if d <= DEFAULT_MAX_DISTANCE}
    for r in rows[:50]:
        assert float(r["distance"]) == min_distances([ieee_hashes[r["path_b"]]], [hash_files([r["path_a"]]).hashes[r["path_a"]]])[0]
    covid_row = next(line for line in printed.splitlines() if line.split()[:3] == ["covid-chestxray-dataset", covid_db.name, "covid"])
    assert covid_row.split()[3:7] == ["451", "247", "54.8%", "covid"]
    assert f"wrote {out}" in printed


def test_counts_per_collection_pair_and_class() -> None:
    """Three collections: each later one against each earlier one, per class, with the class its copies have there."""
    rng = np.random.default_rng(0)
    hashes = [rng.bytes(32).hex() for _ in range(4)]  # random 256-bit hashes: ~128 bits apart
    copy = lambda h: h[:-1] + format(int(h[-1], 16) ^ 0b11, "x")  # noqa: E731 - 2 bits of 256 differ
    a = Collection("A", [Record("a0", "covid", "c", "A"), Record("a1", "normal", "n", "A")])
    b = Collection("B", [Record("b0", "viral", "v", "B"), Record("b1", "covid", "c", "B"), Record("b2", "covid", "c", "B")])
    c = Collection("C", [Record("c0", "normal", "n", "C"), Record("c1", "normal", "n", "C")])
    by_path = {"a0": hashes[0], "a1": hashes[1], "b0": copy(hashes[0]), "b1": hashes[2], "b2": hashes[3],
               "c0": copy(hashes[2]), "c1": copy(hashes[1])}  # c2 unreadable: no hash
    c = Collection("C", [*c.records, Record("c2", "normal", "n", "C")])
    overlap = collection_overlap([a, b, c], by_path)
    counts = {(o.later, o.earlier, o.label): (o.images, o.duplicated, dict(o.earlier_labels)) for o in overlap.counts}
    assert counts == {
        ("B", "A", "covid"): (2, 0, {}), ("B", "A", "viral"): (1, 1, {"covid": 1}),
        ("C", "A", "normal"): (2, 1, {"normal": 1}), ("C", "B", "normal"): (2, 1, {"covid": 1}),
    }
    assert [(p.earlier.path, p.later.path, p.distance) for p in overlap.pairs] == [("a0", "b0", 0.5), ("b1", "c0", 0.5), ("a1", "c1", 0.5)]
    assert overlap.unhashed == 1
    text = overlap.format(listed_pairs=2)
    assert "1 images could not be read" in text and "... and 1 more pairs" in text


def test_collection_names_stay_apart() -> None:
    assert collection_names(["x/db", "y/ieee"]) == ["db", "ieee"]
    assert collection_names(["x/db", "y/db"]) == ["x/db", "y/db"]


@pytest.mark.parametrize("extra, message", [
    ([], "--data: give two or more collections"),
    (["--data", "/nonexistent/collection"], "/nonexistent/collection: no such file or folder"),
    (["--data", "{ieee}", "--max-distance", "65"], "--max-distance must be between 0 and 64"),
    (["--data", "{ieee}", "--out", "/nonexistent/folder/pairs.csv"], "--out /nonexistent/folder/pairs.csv: its folder does not exist"),
])
def test_bad_arguments_are_one_line_and_exit_2(extra: list[str], message: str, shared_data: Path, capsys) -> None:
    ieee = str(shared_data / "covid-chestxray-dataset")
    argv = ["data", "duplicates", "--quiet", "--data", ieee, *(e.format(ieee=ieee) for e in extra)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
