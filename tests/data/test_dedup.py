"""Perceptual hashes: robust to re-encoding, far apart for different X-rays, cached, and the measured overlaps."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrscreen.data import dedup
from cxrscreen.data.dedup import (
    DEFAULT_MAX_DISTANCE,
    block_bits,
    hamming_distances,
    hash_files,
    leave_out_near_duplicates,
    min_distances,
    near_duplicate_groups,
)
from cxrscreen.data.records import Record
from cxrscreen.data.sources import scan_paths
from cxrscreen.errors import ConfigError


def reencode(src: Path, dst: Path, scale: float, quality: int) -> Path:
    """A resized, JPEG re-encoded copy, as collections copy each other's pictures."""
    with Image.open(src) as image:
        small = image.convert("L").resize((int(image.width * scale), int(image.height * scale)), Image.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality)
    dst.write_bytes(buffer.getvalue())
    return dst


@pytest.fixture(scope="module")
def covid_images(radiography_root: Path) -> list[Path]:
    return sorted((radiography_root / "COVID" / "images").glob("*.jpg"))[:24]


def test_reencoded_copies_stay_near_and_different_xrays_far(covid_images: list[Path], tmp_path: Path) -> None:
    copies = [reencode(p, tmp_path / f"{p.stem}_copy.jpg", scale=0.6, quality=70) for p in covid_images[:8]]
    hashes = hash_files([*covid_images, *copies], cache_file=None).hashes
    originals = [hashes[str(p)] for p in covid_images]
    copied = [hashes[str(p)] for p in copies]
    assert all(len(h) == 64 for h in originals)  # 256-bit pHash
    to_copy = np.diag(hamming_distances(originals[:8], copied))
    assert (to_copy <= DEFAULT_MAX_DISTANCE).all()
    between = hamming_distances(originals, originals)[np.triu_indices(len(originals), 1)]
    assert between.min() > 2 * DEFAULT_MAX_DISTANCE


def test_hashes_are_cached_by_path_size_and_mtime(covid_images: list[Path], tmp_path: Path, monkeypatch) -> None:
    image = tmp_path / "x.jpg"
    image.write_bytes(covid_images[0].read_bytes())
    cache = tmp_path / "cache.sqlite"
    first = hash_files([image], cache_file=cache).hashes
    monkeypatch.setattr(dedup, "load_xray", lambda path: pytest.fail("cached hash was recomputed"))
    assert hash_files([image], cache_file=cache).hashes == first
    monkeypatch.undo()
    image.write_bytes(covid_images[1].read_bytes())
    assert hash_files([image], cache_file=cache).hashes != first


def test_unreadable_files_are_reported_not_raised(tmp_path: Path, covid_images: list[Path]) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    result = hash_files([broken, tmp_path / "missing.jpg", covid_images[0]], cache_file=None)
    assert list(result.hashes) == [str(covid_images[0])]
    assert {path for path, _ in result.errors} == {str(broken), str(tmp_path / "missing.jpg")}


def test_groups_follow_chains_of_near_duplicates() -> None:
    base = np.zeros(4, dtype=np.uint64)
    one_word_flip = lambda bits: np.array([(1 << bits) - 1, 0, 0, 0], dtype=np.uint64)  # noqa: E731
    hashes = np.stack([base, one_word_flip(20), one_word_flip(40), ~base, ~base ^ one_word_flip(4)])
    # 20 of 256 bits = 5 per 64: 0-1 and 1-2 are near, 0-2 (10 per 64) only through the chain.
    assert sorted(map(sorted, near_duplicate_groups(hashes, max_distance=6))) == [[0, 1, 2], [3, 4]]
    assert near_duplicate_groups(hashes, max_distance=0) == []
    assert min_distances(hashes[:1], hashes[3:]).tolist() == [63.0]


def test_hash_widths_must_match() -> None:
    with pytest.raises(ConfigError, match="cannot compare 64-bit hashes with 256-bit"):
        min_distances(["0" * 16], ["0" * 64])


def test_ieee8023_overlap_with_radiography_covid_matches_the_measured_range(shared_data: Path) -> None:
    """The data README measured 255 (<= 4 bits) to 342 (<= 8 bits, 64-bit pHash) of 570 ieee8023 images inside
    the Radiography DB's COVID class; a random fifth of them must show the same share."""
    ieee = sorted((shared_data / "covid-chestxray-dataset" / "images").glob("*.jpg"))
    sample = [ieee[i] for i in np.random.default_rng(0).permutation(len(ieee))[:114]]
    covid = sorted((shared_data / "COVID-19_Radiography_Dataset" / "COVID" / "images").glob("*.jpg"))
    found = min_distances(list(hash_files(sample).hashes.values()), list(hash_files(covid).hashes.values()))
    share = float((found <= DEFAULT_MAX_DISTANCE).mean())
    assert 255 / 570 * 0.85 <= share <= 342 / 570


def test_kermany_test_images_are_not_in_the_radiography_database(shared_data: Path) -> None:
    """The DB's Viral Pneumonia class holds Kermany *train* pictures only: its test images must find no match,
    while its train virus images must (false-positive and true-positive control of the threshold)."""
    viral_db = sorted((shared_data / "COVID-19_Radiography_Dataset" / "Viral Pneumonia" / "images").glob("*.jpg"))
    reference = list(hash_files(viral_db).hashes.values())
    test_virus = sorted((shared_data / "chest_xray" / "test" / "PNEUMONIA").glob("*virus*.jpg"))[:40]
    train_virus = sorted((shared_data / "chest_xray" / "train" / "PNEUMONIA").glob("*virus*.jpg"))[:40]
    assert (min_distances(list(hash_files(test_virus).hashes.values()), reference) > DEFAULT_MAX_DISTANCE).all()
    assert (min_distances(list(hash_files(train_virus).hashes.values()), reference) <= DEFAULT_MAX_DISTANCE).mean() > 0.8


def test_leave_out_near_duplicates_of_training_images(covid_images: list[Path], tmp_path: Path) -> None:
    records = [Record(str(p), "covid", "COVID", "radiography_db") for p in covid_images[:10]]
    records.append(Record(str(tmp_path / "unreadable.jpg"), "covid", "COVID", "radiography_db"))
    hashes = hash_files([r.path for r in records], cache_file=None).hashes
    training = [reencode(p, tmp_path / f"t{k}.jpg", 0.8, 85) for k, p in enumerate(covid_images[:3])]
    kept, left_out = leave_out_near_duplicates(records, hashes, hash_files(training, cache_file=None).hashes.values())
    assert left_out == 3
    assert [r.path for r in kept] == [r.path for r in records[3:]]


def all_pairs_groups(hashes: list[str], max_distance: float) -> set[frozenset[int]]:
    """The reference the index replaced: every pair compared, chains joined by connected components."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    values = dedup.hashes_to_array(hashes)
    i, j = np.nonzero(np.triu(block_bits(values, values) <= max_distance * dedup.bits_per_unit(values), 1))
    _, component = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(len(values),) * 2), directed=False)
    members: dict[int, set[int]] = {}
    for index, label in enumerate(component.tolist()):
        members.setdefault(label, set()).add(index)
    return {frozenset(group) for group in members.values() if len(group) > 1}


# Every shared collection, those that copy each other whole (ieee8023, the DB's COVID and viral classes), the others
# one image in ``stride``: 6,700 images, 547 groups of up to 7 at the default threshold.
SHARED_STRIDES = {"covid-chestxray-dataset": 1, "COVID-19_Radiography_Dataset": 1, "chest_xray": 6,
                  "TB_Chest_Radiography_Database": 7, "lung_segmentation/jsrt": 5, "lung_segmentation/montgomery_shenzhen": 7}


def test_groups_on_the_shared_collections_are_those_of_comparing_all_pairs(shared_data: Path) -> None:
    paths = []
    for collection, stride in SHARED_STRIDES.items():
        records = scan_paths([shared_data / collection], frontal_only=False)[0].records
        paths += [r.path for r in records if r.label != "normal" or collection != "COVID-19_Radiography_Dataset"][::stride]
    hashes = list(hash_files(paths).hashes.values())
    assert len(hashes) == len(paths) > 6000
    for max_distance in (DEFAULT_MAX_DISTANCE, 8):
        expected = all_pairs_groups(hashes, max_distance)
        assert len(expected) > 500 and max(map(len, expected)) >= 5  # chains, not only pairs
        assert {frozenset(g) for g in near_duplicate_groups(hashes, max_distance)} == expected


def test_hashes_to_array_reads_each_64_bit_word_as_its_hex_digits_say():
    hashes = ["0123456789abcdef" + "fedcba9876543210" + "0" * 15 + "1" + "8" + "0" * 15, "f" * 64]
    values = dedup.hashes_to_array(hashes)
    assert values.dtype == np.uint64 and values.shape == (2, 4)
    assert values.tolist() == [[int(h[k : k + 16], 16) for k in range(0, 64, 16)] for h in hashes]
    with pytest.raises(ConfigError, match="not a hexadecimal hash"):
        dedup.hashes_to_array(["0 " * 32])
