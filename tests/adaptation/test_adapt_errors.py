"""Sites adaptation cannot learn from get one clear line and exit 2, never a traceback; a site without patients
is cross-validated by near-duplicate group, and says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrscreen.adaptation.config import AdaptConfig
from cxrscreen.adaptation.site import load_site, site_evaluator
from cxrscreen.cli import main


def run_adapt(manifest: Path, parent: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["adapt", "--model", str(parent), "--data", str(manifest), "--out", str(out), "--quiet",
               "--num-threads", "1", *extra])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "pick, extra, message",
    [
        (lambda covid, other: covid[:12], (), "only one class has images (covid 12, normal 0, viral 0)"),
        (lambda covid, other: covid[:12] + [(p, "No Finding", q) for p, _, q in other[:5]], ("--classes", "covid,other"),
         "fewer than 10 images in class other 5"),
        (lambda covid, other: [(p, "zebra", q) for p, _, q in covid[:12]], (), "no image has a label the task covid,normal,viral uses (found: zebra 12)"),
        (lambda covid, other: covid[:12] + other[:12], ("--classes", "covid,other", "--positive", "viral"),
         "--positive viral: not one of the site's classes"),
    ],
    ids=["one-class", "too-few", "unmapped-labels", "unknown-positive"],
)
def test_bad_sites_get_one_line(pick, extra, message, manifest_writer, ieee_rows, tiny_parent, tmp_path, capsys):
    covid, other = ieee_rows[:24], ieee_rows[24:]
    manifest = manifest_writer(tmp_path / "site.csv", pick(covid, other))
    rc, err = run_adapt(manifest, tiny_parent, tmp_path / "out", capsys, *extra)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("cxrscreen: error: ") and message in err
    assert str(manifest) in err or message.startswith("--positive")
    assert not (tmp_path / "out" / "best.pt").exists()


def test_without_patients_folds_follow_near_duplicate_groups(manifest_writer, ieee_rows, tiny_parent, tmp_path):
    rows = [(p, label, "") for p, label, _ in ieee_rows[:12] + ieee_rows[24:36]]
    # The same picture twice under two names: one near-duplicate group.
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(Path(rows[0][0]).read_bytes())
    manifest = manifest_writer(tmp_path / "site.csv", rows + [(str(copy), rows[0][1], "")])
    notes: list[str] = []
    cfg = AdaptConfig(data=[str(manifest)], model=str(tiny_parent), classes="covid,other", progress=False)
    site = load_site(cfg, site_evaluator(cfg), notes.append)
    assert any("no patient column, so folds are drawn by near-duplicate group only" in n for n in notes)
    assert site.groups[0] == site.groups[-1]
    assert len(np.unique(site.groups)) == len(rows)
