"""The bundled models by name: the manifest, `cxrscreen models`, and names wherever a model path goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cxrscreen.errors import ModelError
from cxrscreen.inference.predictor import resolve_model_path
from cxrscreen.models.bundled import MANIFEST, WEIGHTS_DIR, bundled_model, bundled_models, is_bundled_name


def test_every_shipped_classifier_is_listed_once_and_every_entry_has_its_file():
    listed = {model.file for model in bundled_models().values()}
    shipped = {path.name for path in WEIGHTS_DIR.glob("*.pt") if path.name != "lung_unet.pt"}
    assert listed == shipped
    assert next(iter(bundled_models())) == "default"
    for model in bundled_models().values():
        assert model.path.is_file() and model.use and model.external


def test_a_name_resolves_to_its_file_and_a_path_always_wins(tmp_path, monkeypatch):
    for name, model in bundled_models().items():
        assert resolve_model_path(name) == model.path
    assert resolve_model_path(None) == bundled_model("default").path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()  # a run directory that happens to be called like a bundled model
    assert not is_bundled_name("default")
    with pytest.raises(ModelError, match="run directory holds no best.pt"):
        resolve_model_path("default")


def test_an_unknown_name_lists_the_bundled_ones():
    with pytest.raises(ModelError, match="bundled models, by name: " + ", ".join(bundled_models())):
        resolve_model_path("no-such-model")
    with pytest.raises(ModelError, match="no bundled model named 'no-such-model'"):
        bundled_model("no-such-model")


def test_a_broken_manifest_is_one_clear_error(tmp_path):
    broken = tmp_path / "bundled.json"
    broken.write_text("{not json")
    with pytest.raises(ModelError, match=f"{broken}: cannot read the list of bundled models"):
        bundled_models(broken)


def test_cxrscreen_models_lists_each_bundled_model_with_its_checkpoint_and_external_figures():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    out = subprocess.run([sys.executable, "-m", "cxrscreen", "models", "--json"], capture_output=True, text=True,
                         env=env, check=True).stdout
    listing = json.loads(out)
    manifest = json.loads(MANIFEST.read_text())
    assert [row["name"] for row in listing["bundled"]] == list(manifest)
    from cxrscreen.models.checkpoint import read_checkpoint

    for row in listing["bundled"]:
        meta = read_checkpoint(row["file"])["meta"]
        assert row["classes"] == list(meta["classes"]) and row["checkpoint"] == meta["name"]
        assert row["img_size"] == meta["preprocessing"]["img_size"]
        assert row["external"] == manifest[row["name"]]["external"]
    assert "efficientnet_lite0" in {arch["name"] for arch in listing["architectures"]}
    text = subprocess.run([sys.executable, "-m", "cxrscreen", "models"], capture_output=True, text=True, env=env,
                          check=True).stdout
    for row in listing["bundled"]:
        assert f"{row['name']}: {','.join(row['classes'])}" in text
