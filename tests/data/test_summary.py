"""``data summary``: per-class table, class-by-source table with confounding warnings, plots."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from cxrscreen.cli import main
from cxrscreen.data.dedup import hash_files
from cxrscreen.data.labels import LabelSet
from cxrscreen.data.sources import load_dataset
from cxrscreen.data.summary import save_plots, summarize


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
