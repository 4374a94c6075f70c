"""Folds by patient and near-duplicate group, stratified by class; the learning curve's per-class draws."""

from __future__ import annotations

import numpy as np

from cxrscreen.adaptation.folds import draw_per_class, inner_split, make_folds
from cxrscreen.data.records import Record
from cxrscreen.data.splits import record_groups


def site_records(n_patients: int = 60, seed: int = 0) -> tuple[list[Record], dict[str, str], np.ndarray]:
    """Patients with 1-4 images each (class per patient, a third COVID), and pairs of near-duplicate pictures
    across patients (equal pHashes)."""
    rng = np.random.default_rng(seed)
    records, hashes, targets = [], {}, []
    for patient in range(n_patients):
        target = int(patient % 3 == 0)
        for image in range(int(rng.integers(1, 5))):
            path = f"/site/p{patient}_{image}.png"
            records.append(Record(path, "covid" if target else "normal", "x", "site", f"p{patient}"))
            hashes[path] = "".join(rng.choice(list("0123456789abcdef"), 64))
            targets.append(target)
    # The first image of patient k repeats the picture of patient k + 1 (same hash): one group across patients.
    firsts = {r.patient_id: r.path for r in reversed(records)}
    for k in range(0, n_patients - 1, 7):
        hashes[firsts[f"p{k}"]] = hashes[firsts[f"p{k + 1}"]]
    return records, hashes, np.array(targets)


def test_no_patient_or_near_duplicate_group_spans_two_folds():
    records, hashes, targets = site_records()
    groups = record_groups(records, hashes, 6)
    folds = make_folds(groups, targets, 2, k=5, seed=3)
    assert set(folds.tolist()) == set(range(5))
    for key in {r.patient_id for r in records}:
        assert len({f for r, f in zip(records, folds) if r.patient_id == key}) == 1, key
    by_hash: dict[str, set[int]] = {}
    for record, fold in zip(records, folds):
        by_hash.setdefault(hashes[record.path], set()).add(int(fold))
    assert all(len(sides) == 1 for sides in by_hash.values())


def test_folds_are_stratified_by_class():
    records, hashes, targets = site_records(n_patients=120, seed=1)
    folds = make_folds(record_groups(records, hashes, 6), targets, 2, k=5, seed=0)
    for c in (0, 1):
        per_fold = np.bincount(folds[targets == c], minlength=5)
        expected = (targets == c).sum() / 5
        # Whole groups of up to 8 images are dealt, so a fold can miss its share by less than one group.
        assert np.all(np.abs(per_fold - expected) <= 8), (c, per_fold, expected)


def test_inner_split_keeps_groups_whole_and_takes_its_fraction():
    records, hashes, targets = site_records(n_patients=100, seed=2)
    groups = record_groups(records, hashes, 6)
    pool = np.arange(len(records))[::2]  # any subset of the site, as the training folds are
    train, val = inner_split(pool, groups, targets, 2, 0.2, seed=0)
    assert sorted([*train, *val]) == sorted(pool)
    assert not set(groups[train]) & set(groups[val])
    assert 0.1 < len(val) / len(pool) < 0.3


def test_draw_per_class_takes_size_of_each_class_from_the_pool_only():
    targets = np.array([0] * 30 + [1] * 6 + [2] * 20)
    pool = np.arange(0, 56, 2)  # 15 of class 0, 3 of class 1, 10 of class 2
    chosen = draw_per_class(pool, targets, 10, np.random.default_rng(0))
    assert set(chosen) <= set(pool)
    assert np.bincount(targets[chosen]).tolist() == [10, 3, 10]
    again = draw_per_class(pool, targets, 10, np.random.default_rng(0))
    other = draw_per_class(pool, targets, 10, np.random.default_rng(1))
    assert again.tolist() == chosen.tolist() and other.tolist() != chosen.tolist()
