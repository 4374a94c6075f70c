"""``data summary``: per-class table, class-by-source table with confounding warnings, plots."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from cxrscreen.cli import main
from cxrscreen.data.dedup import hash_files
from cxrscreen.data.labels import LabelSet
from cxrscreen.data.sources import load_dataset
from cxrscreen.data.summary import save_plots, summarize
from subsets import link_subset


def test_summary_counts_sizes_sources_and_warns_about_confounding(small_radiography: Path, shared_data: Path) -> None:
    tb = shared_data / "TB_Chest_Radiography_Database"
    dataset = load_dataset([small_radiography, tb], LabelSet.parse("4class"))
    summary = summarize(dataset, hash_files(dataset.paths).hashes)
    rows = {c.name: c for c in summary.classes}
    assert rows["covid"].images == 12 and rows["lung_infection"].images == len(list(tb.rglob("*.jpg")))
    assert rows["covid"].patients is None and rows["covid"].sources == {"radiography_db": 12}
    with Image.open(dataset.records[0].path) as first:
        assert rows["covid"].size_min == first.size  # the DB's images are all one size
    assert summary.by_source == {"tb_db": {"lung_infection": rows["lung_infection"].images},
                                 "radiography_db": {"covid": 12, "normal": 12, "viral": 12}}
    text = summary.format()
    assert "class lung_infection comes from one source only (tb_db)" in text
    assert "2 of 2 sources hold one class only" not in text and "1 of 2 sources hold one class only" in text
    for name in dataset.classes:
        assert name in text


def test_summary_counts_patients_and_cross_collection_duplicates(shared_data: Path, tmp_path: Path) -> None:
    ieee = load_dataset(shared_data / "covid-chestxray-dataset", LabelSet.parse("covid,other"))
    covid_db = sorted((shared_data / "COVID-19_Radiography_Dataset" / "COVID" / "images").glob("*.jpg"))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,source\n" + "".join(f"{p},COVID,radiography_db\n" for p in covid_db), encoding="utf-8")
    dataset = load_dataset([shared_data / "covid-chestxray-dataset", manifest], LabelSet.parse("covid,other"))
    summary = summarize(dataset, hash_files(dataset.paths).hashes)
    assert summary.classes[0].patients == len({r.patient_id for r in ieee.records if r.label == "covid"})
    spanning = [w for w in summary.warnings if "span collections ieee8023 + radiography_db" in w]
    assert spanning and int(spanning[0].split()[0]) > 150


def test_plots_are_written(small_radiography: Path, tmp_path: Path) -> None:
    dataset = load_dataset(small_radiography)
    written = save_plots(dataset, tmp_path / "plots", per_class=4, histogram_images=6)
    assert sorted(p.name for p in written) == ["intensity_histograms.png", "samples_covid.png", "samples_normal.png", "samples_viral.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 100


def test_cli_summary_prints_tables_and_plots(small_radiography: Path, tmp_path: Path, capsys) -> None:
    plots = tmp_path / "plots"
    assert main(["data", "summary", str(small_radiography), "--plots", str(plots), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "near-duplicate groups" in out and "radiography_db" in out
    assert (plots / "samples_viral.png").is_file()


def expected_age(record, shared_data: Path) -> str:
    """The age group each collection's documentation gives (see ../shared/data/README.md and data/sources/ages.py)."""
    collection = record.source.split("/")[0]
    if collection in ("ieee8023", "jsrt"):
        age = record.extra.get("age")
        return "unknown" if age is None else ("pediatric" if float(age) < 18 else "adult")
    by_finding = {"covid": "adult", "viral": "pediatric", "normal": "mixed"}
    return {"kermany": "pediatric", "montgomery": "adult", "shenzhen": "mixed", "tb_db": "adult",
            "radiography_db": by_finding.get(record.label, "unknown")}[collection]


@pytest.fixture(scope="module")
def many_sources(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, small_radiography: Path) -> list[Path]:
    """Seven collections, a few images each (ieee8023 whole): real files, linked."""
    root = tmp_path_factory.mktemp("many_sources")
    kermany = link_subset(shared_data / "chest_xray", root / "chest_xray", 30, pattern="*/*/*.jpg")
    lungs = shared_data / "lung_segmentation"
    nlm = link_subset(lungs / "montgomery_shenzhen", root / "montgomery_shenzhen", 1000, pattern="images/*00_?.jpg")
    jsrt = link_subset(lungs / "jsrt", root / "jsrt", 1000, pattern="images/JPC??0[0-2]?.jpg")
    (jsrt / "metadata.csv").symlink_to(lungs / "jsrt" / "metadata.csv")
    tb = link_subset(shared_data / "TB_Chest_Radiography_Database", root / "TB_Chest_Radiography_Database", 10, pattern="*/*.jpg")
    return [small_radiography, kermany, shared_data / "covid-chestxray-dataset", tb, nlm, jsrt]


def test_summary_tables_by_source_and_age_with_confounds(many_sources: list[Path], shared_data: Path) -> None:
    dataset = load_dataset(many_sources, LabelSet.parse("covid,other"))
    summary = summarize(dataset)
    assert {"montgomery", "shenzhen", "jsrt", "tb_db", "kermany", "radiography_db"} <= set(summary.by_source)
    expected_by_source: dict[str, Counter] = {}
    expected_by_class: dict[str, Counter] = {name: Counter() for name in dataset.classes}
    for record, target in zip(dataset.records, dataset.targets):
        age = expected_age(record, shared_data)
        expected_by_source.setdefault(record.source, Counter())[age] += 1
        expected_by_class[dataset.classes[target]][age] += 1
    assert summary.ages_by_source == expected_by_source and summary.ages_by_class == expected_by_class
    assert expected_by_source["jsrt"]["adult"] > 0 and expected_by_class["other"]["pediatric"] > 0
    assert summary.by_source["montgomery"] == {"other": sum(1 for r in dataset.records if r.source == "montgomery")}
    assert summary.to_dict()["ages_by_source"] == expected_by_source
    shares = {name: c["pediatric"] / (c["pediatric"] + c["adult"]) for name, c in expected_by_class.items()}
    assert max(shares.values()) - min(shares.values()) >= 0.2  # the fixture has the confound to warn about
    text = summary.format()
    warning = next(line for line in text.splitlines() if "pediatric share" in line)
    for name, share in shares.items():
        assert f"{name} {share:.0%} of {expected_by_class[name]['pediatric'] + expected_by_class[name]['adult']}" in warning
    single = next(line for line in text.splitlines() if "hold one class only" in line)
    assert all(f"{s} (other)" in single for s in ("kermany", "tb_db"))
    for row in ("source", "class"):
        assert any(line.split() == [row, "adult", "pediatric", "mixed", "unknown"] for line in text.splitlines())


def test_age_warning_names_classes_of_unknown_age_and_stays_quiet_without_a_gap(small_radiography: Path, many_sources: list[Path]) -> None:
    radiography = summarize(load_dataset(small_radiography))
    assert radiography.ages_by_class == {"covid": {"adult": 12}, "normal": {"mixed": 12}, "viral": {"pediatric": 12}}
    assert any(w.startswith("pediatric share of each class's images of known age: viral 100% of 12, covid 0% of 12 "
                            "(normal: age unknown)") for w in radiography.warnings)
    adults = load_dataset(many_sources[3:], LabelSet(("normal", "tuberculosis")), allow_missing_classes=True)
    assert not any("pediatric" in w for w in summarize(adults).warnings)


def test_cli_summary_prints_age_tables_for_several_data_flags(many_sources: list[Path], capsys) -> None:
    args = ["data", "summary", *[a for path in many_sources for a in ("--data", str(path))], "--classes", "binary", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "age groups" in out and "warning: pediatric share" in out and "near-duplicate groups" in out
    montgomery = len(list((many_sources[4] / "images").glob("MCUCXR*")))
    assert montgomery and any(line.split() == ["montgomery", str(montgomery), "0", "0", "0"] for line in out.splitlines())


def test_any_collection_can_be_looked_at_one_class_or_labels_the_task_does_not_use(
    many_sources: list[Path], capsys
) -> None:
    """`data summary` of the TB database (one class, no label of the default task) and of Kermany (no covid; bacterial
    pneumonia unused) with the default classes: summarised, each unused label as its own class, not refused."""
    kermany, tb = many_sources[1], many_sources[3]
    assert main(["data", "summary", str(tb), "--quiet", "--no-dedup"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.split()[:1] in (["covid"], ["Tuberculosis"])}
    assert rows == {"covid": "0", "Tuberculosis": str(len(list(tb.rglob("*.jpg"))))}
    assert "each shown as a class of its own: Tuberculosis" in out and "--label-map" in out

    dataset = load_dataset(kermany, keep_unused_labels=True)
    counts = dataset.class_counts()
    assert counts["covid"] == 0 and counts["normal"] > 0 and counts["viral"] > 0 and counts["bacteria"] > 0
    assert len(dataset) == len(list(kermany.rglob("*.jpeg")) + list(kermany.rglob("*.jpg")))
    with pytest.raises(Exception, match="no image of class covid"):  # a task to train on still needs every class
        load_dataset(kermany)
