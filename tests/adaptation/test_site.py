"""The site's images: ``frontal_only`` really selects (lateral views of ieee8023 join only when it is False), and
each site image is prepared and hashed once per adaptation."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import cxrscreen.adaptation.site as site_module
import cxrscreen.data.cache as cache
import cxrscreen.data.dedup as dedup
import cxrscreen.evaluation.evaluate as evaluate_module
from cxrscreen.adaptation.config import AdaptConfig
from cxrscreen.adaptation.site import load_site, site_evaluator


@pytest.fixture(scope="module")
def ieee_with_laterals(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """An ieee8023 folder (symlinks) of every lateral row and 12 frontal COVID and 12 frontal other rows, and the
    file names of its lateral images, counted from metadata.csv."""
    src = shared_data / "covid-chestxray-dataset"
    with open(src / "metadata.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    rows = [r for r in rows if (src / r["folder"] / r["filename"]).is_file()]
    lateral = [r for r in rows if r["view"] == "L"]
    covid = [r for r in rows if r["view"] != "L" and r["finding"] == "COVID-19"][:12]
    other = [r for r in rows if r["view"] != "L" and r["finding"] != "COVID-19" and r["finding"]][:12]
    root = tmp_path_factory.mktemp("ieee_laterals")
    (root / "images").mkdir()
    kept = lateral + covid + other
    for row in kept:
        link = root / "images" / row["filename"]
        if not link.exists():
            link.symlink_to(src / row["folder"] / row["filename"])
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    assert len(lateral) > 20  # the collection has lateral views (43 in this snapshot)
    return root, {r["filename"] for r in lateral}


def test_frontal_only_false_adds_exactly_the_lateral_views(ieee_with_laterals, tiny_parent):
    root, lateral = ieee_with_laterals
    sites = {}
    for frontal_only in (True, False):
        cfg = AdaptConfig(data=[str(root)], model=str(tiny_parent), classes="covid,other", frontal_only=frontal_only,
                          progress=False)
        sites[frontal_only] = load_site(cfg, site_evaluator(cfg), lambda _m: None)
    frontal = {Path(r.path).name for r in sites[True].records}
    both = {Path(r.path).name for r in sites[False].records}
    assert not frontal & lateral and len(frontal) == 24
    assert both - frontal == lateral
    assert len(sites[False].images) == len(sites[False].targets) == len(both)


def test_each_site_image_is_prepared_and_hashed_once(manifest_writer, ieee_rows, checkpoint_factory, tmp_path, monkeypatch):
    """One pass of the prepared-image cache and of the pHash over the site, even when the parent stores training
    hashes (the near-duplicate check hashes the site; adaptation reuses those hashes)."""
    manifest = manifest_writer(tmp_path / "site.csv", ieee_rows)
    parent = checkpoint_factory(tmp_path / "parent.pt", train_hashes=["0" * 64])
    calls = {"prepare": [], "hash": []}
    real_prepare, real_hash = cache.load_prepared, dedup.hash_files

    def counting_prepare(paths, *args, **kwargs):
        calls["prepare"].extend(map(str, paths))
        return real_prepare(paths, *args, **kwargs)

    def counting_hash(paths, *args, **kwargs):
        paths = [str(p) for p in paths]
        calls["hash"].extend(paths)
        return real_hash(paths, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "load_prepared", counting_prepare)
    monkeypatch.setattr(evaluate_module, "hash_files", counting_hash)
    monkeypatch.setattr(site_module, "hash_files", counting_hash)
    cfg = AdaptConfig(data=[str(manifest)], model=str(parent), classes="covid,other", progress=False)
    site = load_site(cfg, site_evaluator(cfg), lambda _m: None)
    assert len(site.records) == len(ieee_rows)
    assert sorted(calls["prepare"]) == sorted(r.path for r in site.records)
    assert sorted(calls["hash"]) == sorted(r.path for r in site.records)
    assert set(site.hashes) == {r.path for r in site.records}
