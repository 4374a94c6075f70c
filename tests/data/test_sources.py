"""Layout detection and loading of every source, on real subsets of ../shared/data and tiny generated trees."""

from __future__ import annotations

import csv
import io
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from subsets import link_subset
from cxrscreen.cli import main
from cxrscreen.data.labels import ALIASES, CANONICAL_FINDINGS, LabelSet
from cxrscreen.data.sources import detect_layout, load_dataset
from cxrscreen.data.sources.base import list_images
from cxrscreen.data.sources.ieee8023 import finding_of
from cxrscreen.errors import ConfigError, DatasetLayoutError


def write_png(path: Path, seed: int, size: int = 64) -> Path:
    """A tiny grey PNG whose content differs with ``seed``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def small_kermany(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """The parent folder of a ``chest_xray`` tree holding 10 images of each split and class folder."""
    parent = tmp_path_factory.mktemp("kermany_download")
    link_subset(shared_data / "chest_xray", parent / "chest_xray", 10, pattern="*/*/*.jpg")
    return parent


def test_real_collections_are_recognised(shared_data: Path) -> None:
    assert detect_layout(shared_data / "COVID-19_Radiography_Dataset") == "radiography_db"
    assert detect_layout(shared_data / "chest_xray") == "kermany"
    assert detect_layout(shared_data / "covid-chestxray-dataset") == "ieee8023"
    assert detect_layout(shared_data / "TB_Chest_Radiography_Database") == "folder"


def test_radiography_database_layout(small_radiography: Path) -> None:
    dataset = load_dataset(small_radiography, LabelSet.parse("3class"))
    assert dataset.class_counts() == {"covid": 12, "normal": 12, "viral": 12}
    assert {r.source for r in dataset.records} == {"radiography_db"}
    assert all(r.patient_id is None for r in dataset.records)
    viral = [r for r, t in zip(dataset.records, dataset.targets) if dataset.classes[t] == "viral"]
    assert all(r.raw_label == "Viral Pneumonia" and "/Viral Pneumonia/images/" in r.path for r in viral)


def test_radiography_masks_are_ignored_and_flat_layout_accepted(tmp_path: Path) -> None:
    root = tmp_path / "COVID-19 Radiography Database"
    for k, name in enumerate(["COVID", "Normal", "Viral Pneumonia"]):
        write_png(root / name / f"{name} (1).png", k)
        write_png(root / name / "masks" / f"{name} (1).png", 10 + k)
    assert detect_layout(root) == "radiography_db"
    dataset = load_dataset(root)
    assert len(dataset) == 3 and not any("/masks/" in r.path for r in dataset.records)


def test_records_are_compact_and_survive_pickling(small_radiography: Path, small_kermany: Path) -> None:
    """A 400k-image run holds 400k records: no __dict__, one shared empty ``extra``, one string per label and
    source; and they still cross a process boundary whole (DDP hands objects over by pickling)."""
    records = load_dataset(small_radiography).records + load_dataset(
        small_kermany, LabelSet.parse("covid,normal,viral,bacterial"), allow_missing_classes=True).records
    plain = [r for r in records if r.source != "kermany"]
    assert plain and not any(hasattr(r, "__dict__") for r in records)
    assert all(r.extra is plain[0].extra and len(r.extra) == 0 for r in plain)
    assert len({id(r.label) for r in records}) == len({r.label for r in records})
    assert len({id(r.source) for r in records}) == len({r.source for r in records})
    again = pickle.loads(pickle.dumps(records))
    assert again == records and [dict(r.extra) for r in again] == [dict(r.extra) for r in records]
    assert all(r.extra is plain[0].extra for r in again if r.source != "kermany")


def test_kermany_labels_and_patients_come_from_file_names(small_kermany: Path) -> None:
    assert detect_layout(small_kermany) == "kermany"
    dataset = load_dataset(small_kermany, LabelSet.parse("covid,normal,viral,bacterial"), allow_missing_classes=True)
    assert {r.source for r in dataset.records} == {"kermany"}
    assert {r.extra["split"] for r in dataset.records} == {"train", "test"}
    for record in dataset.records:
        stem = Path(record.path).stem
        if "PNEUMONIA" in record.path:
            kind = "bacterial" if "_bacteria_" in stem else "viral"
            assert record.label == kind and record.patient_id == stem.split("_")[0]
        else:
            assert record.label == "normal" and stem.startswith(record.patient_id) and record.patient_id.count("-") >= 1
    listed = len(list(small_kermany.glob("chest_xray/*/*/*.jpg")))
    assert len(dataset) == listed and dataset.class_counts()["covid"] == 0


def test_ieee8023_frontal_views_sites_and_patients(shared_data: Path) -> None:
    root = shared_data / "covid-chestxray-dataset"
    rows = list(csv.DictReader((root / "metadata.csv").open(encoding="utf-8")))
    lateral = sum(1 for r in rows if r["view"] == "L")
    dataset = load_dataset(root, LabelSet.parse("covid,other"))
    assert dataset.excluded["lateral views (frontal only)"] == lateral > 0
    assert all(r.extra["view"] != "L" for r in dataset.records)
    assert sum(dataset.dropped.values()) == 0  # every finding maps onto covid or other
    by_path = {r.path: r for r in dataset.records}
    for row in rows[:50]:
        record = by_path.get(str(root / "images" / row["filename"]))
        if record is not None:
            country = row["location"].split(",")[-1].strip()
            assert record.source == (f"ieee8023/{country}" if country else "ieee8023")
            assert record.patient_id == row["patientid"]
    everything = load_dataset(root, LabelSet.parse("covid,other"), frontal_only=False)
    assert len(everything) == len({r["filename"] for r in rows})


def test_ieee8023_missing_files_are_counted(tmp_path: Path, shared_data: Path) -> None:
    real = shared_data / "covid-chestxray-dataset"
    rows = list(csv.DictReader((real / "metadata.csv").open(encoding="utf-8")))[:12]
    (tmp_path / "images").mkdir()
    for row in rows[:10]:
        (tmp_path / "images" / row["filename"]).symlink_to(real / "images" / row["filename"])
    with (tmp_path / "metadata.csv").open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    dataset = load_dataset(tmp_path, LabelSet.parse("covid,other"), frontal_only=False, allow_missing_classes=True)
    expected_missing = len({r["filename"] for r in rows[10:]} - {r["filename"] for r in rows[:10]})
    assert dataset.excluded["rows whose image file is missing"] == expected_missing > 0
    assert any("image files missing" in note for note in dataset.notes)


def test_every_real_ieee8023_finding_is_in_the_alias_table(shared_data: Path) -> None:
    rows = csv.DictReader((shared_data / "covid-chestxray-dataset" / "metadata.csv").open(encoding="utf-8"))
    assert {finding_of(r["finding"]) for r in rows} <= CANONICAL_FINDINGS
    assert set(ALIASES.values()) == CANONICAL_FINDINGS
    assert finding_of("Pneumonia/Viral/SARS") == "viral"


def test_folder_tree_is_named_after_its_collection(shared_data: Path) -> None:
    dataset = load_dataset(shared_data / "TB_Chest_Radiography_Database", LabelSet(("tuberculosis", "normal")),
                           allow_missing_classes=True)
    assert dataset.class_counts()["tuberculosis"] == len(list((shared_data / "TB_Chest_Radiography_Database").rglob("*.jpg")))
    assert {r.source for r in dataset.records} == {"tb_db"}


def test_folder_tree_with_own_names_needs_a_label_map(tmp_path: Path) -> None:
    root = tmp_path / "hospital_x"
    for k in range(3):
        write_png(root / "covid_positive" / f"{k}.png", k)
        write_png(root / "healthy" / "sub" / f"{k}.png", 10 + k)
    write_png(root / "loose.png", 99)
    with pytest.raises(DatasetLayoutError, match="no image of class covid"):
        load_dataset(root, LabelSet.parse("covid,normal"))
    dataset = load_dataset(root, LabelSet.parse("covid,normal", {"covid_positive": "covid"}))
    assert dataset.class_counts() == {"covid": 3, "normal": 3}
    assert {r.source for r in dataset.records} == {"hospital_x"}
    assert dataset.excluded["images outside a class folder"] == 1


def test_manifest_relative_paths_sources_and_unknown_labels(tmp_path: Path) -> None:
    for k in range(4):
        write_png(tmp_path / "img" / f"{k}.png", k)
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        "path,label,patient_id,source\n"
        "img/0.png,COVID-19,p1,site_a\nimg/1.png,normal,p2,\n"
        f"{tmp_path / 'img' / '2.png'},Normal,p3,site_b\nimg/3.png,alien,p4,site_b\nimg/9.png,covid,p5,site_b\n",
        encoding="utf-8",
    )
    dataset = load_dataset(manifest, LabelSet.parse("covid,normal"))
    assert detect_layout(manifest) == "manifest"
    assert [r.source for r in dataset.records] == ["site_a", "manifest", "site_b"]
    assert [r.patient_id for r in dataset.records] == ["p1", "p2", "p3"]
    assert dataset.dropped == Counter({"alien": 1})
    assert dataset.excluded["rows whose image file is missing"] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"file,label\na.png,covid\n", "missing column(s) path"), (b"path,label\n\xe9.png,covid\n", "line 2 is not UTF-8")],
)
def test_bad_manifests_give_one_line_errors(tmp_path: Path, content: bytes, message: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    with pytest.raises(DatasetLayoutError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(manifest)


def test_two_paths_combine_and_shared_files_count_once(small_radiography: Path, shared_data: Path) -> None:
    tb = shared_data / "TB_Chest_Radiography_Database"
    dataset = load_dataset([small_radiography, tb, small_radiography], LabelSet.parse("4class"))
    assert dataset.class_counts()["lung_infection"] == len(list(tb.rglob("*.jpg")))
    assert len(dataset) == len({r.path for r in dataset.records})
    assert any("already listed" in note for note in dataset.notes)


def test_symlink_loop_does_not_hang(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for k in range(2):
        write_png(root / "covid" / f"{k}.png", k)
        write_png(root / "normal" / f"{k}.png", 5 + k)
    (root / "covid" / "loop").symlink_to(root / "covid", target_is_directory=True)
    assert load_dataset(root, LabelSet.parse("covid,normal")).class_counts() == {"covid": 2, "normal": 2}


UNPRIVILEGED_UID = 65534  # nobody


def notes_without_privileges(root: Path, receiver_pipe) -> None:
    """In a forked child: drop root's privileges (root reads any folder), then load ``root`` and send its notes."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(UNPRIVILEGED_UID)
        os.setuid(UNPRIVILEGED_UID)
    try:
        dataset = load_dataset(root, LabelSet.parse("covid,normal"), allow_missing_classes=True)
        receiver_pipe.send(list(dataset.notes))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        receiver_pipe.send(f"raised {type(exc).__name__}: {exc}")


def test_unreadable_class_folder_is_reported() -> None:
    """Runs as root too (CI does): the load happens in a forked child that has given up root's privileges."""
    import multiprocessing
    import shutil
    import tempfile

    # Outside pytest's temporary folders, which only their owner may enter.
    base = Path(tempfile.mkdtemp(prefix="cxrscreen-unreadable-"))
    try:
        base.chmod(0o755)
        root = base / "tree"
        write_png(root / "covid" / "a.png", 1)
        write_png(root / "normal" / "inner" / "b.png", 2)
        for folder in (root, root / "covid", root / "normal"):
            folder.chmod(0o755)
        readable = load_dataset(root, LabelSet.parse("covid,normal"), allow_missing_classes=True)  # imports done here
        assert readable.class_counts() == {"covid": 1, "normal": 1} and not readable.notes
        (root / "normal" / "inner").chmod(0)
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=notes_without_privileges, args=(root, sender))
        child.start()
        sender.close()
        assert receiver.poll(120), "the unprivileged child gave no answer"
        notes = receiver.recv()
        child.join(timeout=60)
    finally:
        if (base / "tree" / "normal" / "inner").exists():
            (base / "tree" / "normal" / "inner").chmod(0o755)
        shutil.rmtree(base)
    assert isinstance(notes, list), notes
    assert any("inner: cannot read folder" in note and "ermission denied" in note for note in notes), notes


def test_layout_errors(tmp_path: Path, shared_data: Path, small_radiography: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetLayoutError, match="unrecognised dataset layout"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetLayoutError, match="holds several collections"):
        load_dataset(shared_data)
    with pytest.raises(DatasetLayoutError, match="no image of class lung_infection"):
        load_dataset(small_radiography, LabelSet.parse("4class"))
    with pytest.raises(ConfigError, match="unknown class name"):
        load_dataset(small_radiography, LabelSet.parse("covid,martian"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [([], "no such file or folder"), (["--classes", "covid,martian"], "unknown class name"),
     (["--classes", "4class"], "no image of class lung_infection")],
)
def test_cli_layout_errors_exit_2(small_radiography: Path, tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    path = tmp_path / "missing" if not extra else small_radiography
    # A split is for training on every class, so a class without images stops it; a summary only looks (it lists
    # the empty class, see test_summary.py).
    argv = ["data", "split", "--data", str(path), "--out", str(tmp_path / "split.csv")] if "4class" in extra else \
        ["data", "summary", str(path), "--no-dedup"]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_listed_images_keep_the_order_of_paths(tmp_path: Path) -> None:
    """Paths are kept as strings but sorted as Path objects sort (part by part): 'a/x' before 'a-b/x', although
    '-' sorts before '/' in a string. The split deals images in this order, so it must not move."""
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, format="PNG")
    for folder in ("a", "a-b", "a.b", "A", "a b"):
        for name in ("x.png", "x-1.png", "X.png"):
            (tmp_path / folder).mkdir(exist_ok=True)
            (tmp_path / folder / name).write_bytes(png.getvalue())
    listed = list_images(tmp_path, recursive=True)
    assert list(listed) == sorted(Path(root, name) for root, _, names in os.walk(tmp_path) for name in names)
    assert list(listed[:2]) == list(listed)[:2] and isinstance(listed[0], Path) and len(listed) == 15
