"""The lung-segmentation sets read as classification collections: NLM Montgomery / Shenzhen and JSRT, on the real
files of ../shared/data/lung_segmentation (expected counts come from the file names and metadata.csv)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from cxrscreen.cli import main
from cxrscreen.data.dedup import DEFAULT_MAX_DISTANCE, hash_files
from cxrscreen.data.labels import LabelSet
from cxrscreen.data.sources import detect_layout, load_dataset
from cxrscreen.data.splits import make_split, record_groups
from cxrscreen.errors import DatasetLayoutError


@pytest.fixture(scope="module")
def nlm_root(shared_data: Path) -> Path:
    return shared_data / "lung_segmentation" / "montgomery_shenzhen"


@pytest.fixture(scope="module")
def jsrt_root(shared_data: Path) -> Path:
    return shared_data / "lung_segmentation" / "jsrt"


def nlm_expected(root: Path) -> Counter:
    """(source, finding) -> images, from the file names: MCUCXR Montgomery, CHNCXR Shenzhen; _0 normal, _1 TB."""
    hospitals = {"MCUCXR": "montgomery", "CHNCXR": "shenzhen"}
    labels = {"0": "normal", "1": "tuberculosis"}
    return Counter((hospitals[p.stem[:6]], labels[p.stem[-1]]) for p in (root / "images").glob("*.jpg"))


def jsrt_rows(root: Path) -> dict[str, dict[str, str]]:
    with (root / "metadata.csv").open(encoding="utf-8") as fh:
        return {Path(row["study_id"]).stem: row for row in csv.DictReader(fh)}


def test_nlm_labels_counts_and_sources_come_from_file_names(nlm_root: Path) -> None:
    expected = nlm_expected(nlm_root)
    dataset = load_dataset(nlm_root, LabelSet(("normal", "tuberculosis")))
    assert Counter((r.source, r.label) for r in dataset.records) == expected
    assert set(expected) == {(s, f) for s in ("montgomery", "shenzhen") for f in ("normal", "tuberculosis")}
    assert not dataset.dropped and not dataset.excluded
    assert all("/images/" in r.path and r.patient_id is None for r in dataset.records)


def test_jsrt_labels_from_file_names_and_metadata_in_extra(jsrt_root: Path) -> None:
    rows = jsrt_rows(jsrt_root)
    dataset = load_dataset(jsrt_root, LabelSet(("normal", "nodule")))
    by_state = Counter("normal" if row["state"] == "non-nodule" else "nodule" for row in rows.values())
    assert dataset.class_counts() == dict(by_state) and len(dataset) == len(rows) == 247
    for record in dataset.records:
        row = rows[Path(record.path).stem]
        assert record.source == "jsrt" and record.label == ("nodule" if record.path.split("/")[-1].startswith("JPCLN") else "normal")
        assert record.extra.get("age", "?") == row["age"] and record.extra["state"] == row["state"]
        assert record.extra.get("diagnosis", "") == row["diagnosis"]


def test_layouts_detected_from_the_folder_or_its_images_folder(nlm_root: Path, jsrt_root: Path, shared_data: Path) -> None:
    assert detect_layout(nlm_root) == detect_layout(nlm_root / "images") == "nlm_tb"
    assert detect_layout(jsrt_root) == detect_layout(jsrt_root / "images") == "jsrt"
    # Passed as its images/ folder, JSRT still finds metadata.csv beside it.
    assert all("age" in r.extra or r.extra.get("state") for r in load_dataset(jsrt_root / "images", LabelSet(("normal", "nodule"))).records)
    with pytest.raises(DatasetLayoutError, match=r"holds several collections \(jsrt, montgomery_shenzhen\); pass each with --data"):
        load_dataset(shared_data / "lung_segmentation")


def test_nlm_download_layout_and_class_folders_holding_nlm_names(nlm_root: Path, tmp_path: Path) -> None:
    real = sorted((nlm_root / "images").glob("*.jpg"))
    download = tmp_path / "MontgomerySet"
    (download / "CXR_png").mkdir(parents=True)
    (download / "ManualMask" / "leftMask").mkdir(parents=True)
    for name, picture in [("MCUCXR_0001_0.jpg", real[0]), ("MCUCXR_0002_1.jpg", real[1]), ("scan notes.jpg", real[2])]:
        (download / "CXR_png" / name).symlink_to(picture)
    (download / "ManualMask" / "leftMask" / "MCUCXR_0001_0.jpg").symlink_to(real[3])
    assert detect_layout(download) == "nlm_tb"
    dataset = load_dataset(download, LabelSet(("normal", "tuberculosis")))
    assert dataset.class_counts() == {"normal": 1, "tuberculosis": 1} and sum(dataset.excluded.values()) == 1
    # A user's own folder per class holding NLM files stays a folder-per-class collection (labels from folders).
    tree = tmp_path / "my_tb_set"
    for folder, picture in [("tuberculosis", real[0]), ("normal", real[1])]:
        (tree / folder).mkdir(parents=True)
        (tree / folder / picture.name).symlink_to(picture)
    assert detect_layout(tree) == "folder"
    assert load_dataset(tree, LabelSet(("normal", "tuberculosis"))).class_counts() == {"normal": 1, "tuberculosis": 1}


def test_tasks_map_the_new_findings_through_the_label_set(nlm_root: Path, jsrt_root: Path, shared_data: Path) -> None:
    nlm = nlm_expected(nlm_root)
    nlm_tb = sum(n for (_, finding), n in nlm.items() if finding == "tuberculosis")
    jsrt_normal = sum(row["state"] == "non-nodule" for row in jsrt_rows(jsrt_root).values())
    nodules = len(jsrt_rows(jsrt_root)) - jsrt_normal
    normals = sum(nlm.values()) - nlm_tb + jsrt_normal
    binary = load_dataset([nlm_root, jsrt_root], LabelSet.parse("covid,other"), allow_missing_classes=True)
    assert binary.class_counts() == {"covid": 0, "other": normals + nlm_tb + nodules} and not binary.dropped
    three = load_dataset([nlm_root, jsrt_root], LabelSet.parse("3class"), allow_missing_classes=True)
    assert three.class_counts()["normal"] == normals
    assert three.dropped == Counter({"tuberculosis": nlm_tb, "nodule": nodules})
    mapped = load_dataset([nlm_root, jsrt_root], LabelSet.parse("normal,abnormal", {"tuberculosis": "abnormal", "nodule": "abnormal"}))
    assert mapped.class_counts() == {"normal": normals, "abnormal": nlm_tb + nodules} and not mapped.dropped
    # The TB database's "Tuberculosis" folder and the NLM sets' _1 images are one finding.
    tb_db = shared_data / "TB_Chest_Radiography_Database"
    both = load_dataset([tb_db, nlm_root], LabelSet(("normal", "tuberculosis")))
    assert both.class_counts()["tuberculosis"] == nlm_tb + len(list(tb_db.rglob("*.jpg")))


def reencoded_copy(source: Path, target: Path) -> Path:
    """The picture of ``source`` as another collection would hold it: resized to 224 px and JPEG-re-encoded."""
    with Image.open(source) as image:
        image.convert("L").resize((224, 224), Image.BILINEAR).save(target, quality=80)
    return target


def test_near_duplicates_across_nlm_and_tb_database_share_a_group_and_a_split_side(
    nlm_root: Path, shared_data: Path, tmp_path: Path
) -> None:
    """This copy of the TB database holds no NLM picture (measured on all 692 x 704: nearest 256-bit pHash pair at
    16.5 bits per 64, threshold 6), so the known shared pictures are made here: three NLM TB images, re-encoded into
    a subset of the TB database's tree. They must join their originals' groups, and land on one side of a split."""
    nlm = tmp_path / "montgomery_shenzhen" / "images"
    nlm.mkdir(parents=True)
    originals = sorted((nlm_root / "images").glob("*.jpg"))[::40]
    for path in originals:
        (nlm / path.name).symlink_to(path)
    tb = tmp_path / "TB_Chest_Radiography_Database" / "Tuberculosis"
    tb.mkdir(parents=True)
    for path in sorted((shared_data / "TB_Chest_Radiography_Database" / "Tuberculosis").glob("*.jpg"))[:15]:
        (tb / path.name).symlink_to(path)
    tuberculosis = [p for p in originals if p.stem.endswith("_1")]
    shared = [next(p for p in tuberculosis if p.stem.startswith(h)) for h in ("MCUCXR", "CHNCXR")] + [tuberculosis[-2]]
    assert len(set(shared)) == 3
    copies = {reencoded_copy(p, tb / f"Tuberculosis-{9000 + k}.jpg"): nlm / p.name for k, p in enumerate(shared)}
    dataset = load_dataset([tb.parent, nlm.parent], LabelSet(("normal", "tuberculosis")))
    assert {r.source for r in dataset.records} == {"tb_db", "montgomery", "shenzhen"}
    hashes = hash_files(dataset.paths, cache_file=False).hashes
    groups = record_groups(dataset.records, hashes, DEFAULT_MAX_DISTANCE)
    index = {Path(r.path): i for i, r in enumerate(dataset.records)}
    for copy, original in copies.items():
        assert groups[index[copy]] == groups[index[original]]
    sizes = Counter(groups.tolist())
    assert sorted(n for n in sizes.values() if n > 1) == [2] * len(copies)  # nothing else joined
    split = make_split(dataset, hashes, seed=0, fractions=(0.5, 0.25, 0.25))
    side = dict(zip(dataset.paths, split.assignment.tolist()))
    for copy, original in copies.items():
        assert side[str(copy)] == side[str(original)]


def test_cli_summary_takes_data_flags_and_a_label_map(nlm_root: Path, jsrt_root: Path, capsys) -> None:
    args = ["data", "summary", "--data", str(nlm_root), "--data", str(jsrt_root), "--classes", "normal,abnormal",
            "--label-map", "tuberculosis=abnormal", "--label-map", "nodule=abnormal", "--no-dedup", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[nlm_tb]" in out and "[jsrt]" in out and "dropped" not in out
    by_source = next(line.split() for line in out.splitlines() if line.startswith("montgomery"))  # the first table
    nlm = nlm_expected(nlm_root)
    assert by_source[1:] == [str(nlm["montgomery", "normal"]), str(nlm["montgomery", "tuberculosis"])]
