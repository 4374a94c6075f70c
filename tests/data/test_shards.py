"""``cxrscreen data shard``: WebDataset shards of prepared images that webdataset itself reads back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from cxrscreen.cli import main
from cxrscreen.data.cache import content_hash, load_prepared
from cxrscreen.data.transforms import Preprocessing

FOLDERS = ("COVID", "Normal", "Viral Pneumonia")


@pytest.fixture
def collection(radiography_root: Path, tmp_path: Path) -> Path:
    """Four real X-rays per class in a folder-per-class tree, and one truncated PNG among the normals."""
    root = tmp_path / "site"
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True)
        for source in sorted((radiography_root / folder / "images").glob("*.jpg"))[:4]:
            (root / folder / source.name).symlink_to(source)
    (root / "Normal" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    return root


def test_shards_hold_the_prepared_images_with_their_labels_and_a_manifest(collection: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "shards"
    code = main(["data", "shard", "--data", str(collection), "--out", str(out), "--img-size", "48", "--shard-size", "5"])
    captured = capsys.readouterr()
    assert code == 1  # one file left out, the others written
    assert "truncated.png" in captured.err and "(left out)" in captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "webdataset" and manifest["classes"] == ["covid", "normal", "viral"]
    assert [s["samples"] for s in manifest["shards"]] == [5, 5, 2]
    assert sorted(p.name for p in out.glob("*.tar")) == [s["name"] for s in manifest["shards"]]
    assert manifest["class_counts"] == {"covid": 4, "normal": 4, "viral": 4}
    assert [f["path"].endswith("truncated.png") for f in manifest["failed"]] == [True]

    urls = [str(out / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("l8"))
    assert len(samples) == manifest["samples"] == 12
    paths = [s["json"]["path"] for s in samples]
    expected = load_prepared(paths, Preprocessing(img_size=48), progress=False)
    for sample, image in zip(samples, expected.images):
        np.testing.assert_array_equal(sample["png"], image)  # lossless: what training sees
        meta = sample["json"]
        assert meta["class"] == manifest["classes"][int(sample["cls"])]
        assert meta["content_hash"] == content_hash(Path(meta["path"]).read_bytes())
        assert meta["source"] and meta["collection"] and "patient" in meta
    by_folder = {Path(p).parent.name: manifest["classes"][int(s["cls"])] for p, s in zip(paths, samples)}
    assert by_folder == {"COVID": "covid", "Normal": "normal", "Viral Pneumonia": "viral"}

    # Shards already there are not replaced by accident.
    assert main(["data", "shard", "--data", str(collection), "--out", str(out), "--img-size", "48"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_split_of_part_of_the_collection_shards_its_training_side(collection: Path, tmp_path: Path, capsys) -> None:
    """A run trained on part of a collection (``--limit-per-class``) saved a split of that part: sharding the whole
    collection with it writes that split's training side, as training reads it."""
    from cxrscreen.data.labels import LabelSet
    from cxrscreen.data.sources import load_dataset
    from cxrscreen.data.splits import Split, save_split

    (collection / "Normal" / "truncated.png").unlink()
    dataset = load_dataset([str(collection)], LabelSet(("covid", "normal", "viral")))
    part = dataset.subset([i for i in range(len(dataset.records)) if i % 3])  # two thirds of the collection
    sides = ["train", "train", "val", "test"] * len(part.records)
    split_csv = save_split(Split(part, np.array(sides[: len(part.records)]), {}), tmp_path / "split.csv")
    out = tmp_path / "shards"
    assert main(["data", "shard", "--data", str(collection), "--out", str(out), "--img-size", "48",
                 "--split", str(split_csv)]) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    expected = [r.path for r, side in zip(part.records, sides) if side == "train"]
    assert manifest["side"] == "train" and manifest["samples"] == len(expected) < len(dataset.records)
