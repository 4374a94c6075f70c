"""The one lung finder (issues 17, 26): the segmenter in ONNX Runtime on one thread, torch only when the ONNX export
cannot be made or read, chosen once and handed to the training cache, the predictor (both backends) and the audit,
so that all of them prepare a file to the same array; the engine is part of the cache key, because the engines do
not give the same prepared image for every X-ray (Normal-1295 is one that differs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import cxrscreen
from cxrscreen.data.cache import PreparedCache, load_prepared
from cxrscreen.data.imageio import load_xray, to_uint8
from cxrscreen.evaluation.audit import AuditConfig, audit_inputs
from cxrscreen.lungs import finder, segmenter
from cxrscreen.lungs.weights import DEFAULT_WEIGHTS

# The engines' lung probabilities differ by up to 1.5e-4; on this X-ray that moves one mask pixel across 0.5 and
# changes the prepared image (measured: 520 pixels, up to 34 grey levels).
ENGINES_DIFFER = "Normal/images/Normal-1295.jpg"


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A copy of the bundled segmenter's weights: the finder's caches (engine, session) keyed by a path of its own."""
    return Path(shutil.copyfile(DEFAULT_WEIGHTS, tmp_path / "lung_unet.pt"))


@pytest.fixture
def loads(monkeypatch) -> list[tuple[str, int | None, segmenter.LungSegmenter]]:
    """Every segmenter the finder loads: (backend, threads, segmenter)."""
    calls = []
    real = segmenter.load_segmenter

    def recording(path=None, backend="torch", threads=None):
        loaded = real(path, backend=backend, threads=threads)
        calls.append((backend, threads, loaded))
        return loaded

    monkeypatch.setattr(segmenter, "load_segmenter", recording)
    return calls


@pytest.fixture(scope="module")
def xrays(shared_data: Path) -> list[Path]:
    """Real X-rays of three collections (Radiography DB, Kermany, ieee8023), Normal-1295 first."""
    radiography = shared_data / "COVID-19_Radiography_Dataset"
    picks = [radiography / ENGINES_DIFFER]
    for folder in ("COVID", "Normal", "Viral Pneumonia"):
        picks += sorted((radiography / folder / "images").glob("*.jpg"))[5:400:50]
    picks += sorted((shared_data / "chest_xray").rglob("*.jpg"))[7:4000:500]
    picks += sorted((shared_data / "covid-chestxray-dataset" / "images").glob("*.jpg"))[3:500:60]
    return picks


def test_finder_runs_onnx_runtime_on_one_thread(weights, loads, monkeypatch):
    threads = []
    real_session = segmenter.cpu_session
    monkeypatch.setattr(segmenter, "cpu_session", lambda model, n, **kw: threads.append(n) or real_session(model, n, **kw))
    lungs = finder.load_lung_finder(weights)
    assert lungs.digest == f"{finder.weights_digest(weights)}|onnx"
    find_lungs = lungs.load()
    backend, n, loaded = loads[-1]
    assert (backend, n, loaded.backend) == ("onnx", 1, "onnx")
    assert threads == [1]  # one ONNX Runtime session, one intra-op thread, opened once (choosing, then loading)
    assert loads[0][2] is loaded
    image = np.full((64, 64), 0.5, dtype=np.float32)
    assert find_lungs([image]) == [None]  # a flat picture has no lungs


@pytest.mark.parametrize("broken", ["made", "read"])
def test_torch_only_when_the_export_cannot_be_made_or_read(weights, loads, monkeypatch, broken):
    def export(path):
        if broken == "made":
            raise RuntimeError("exporter unavailable\nsecond line")
        return b"not an ONNX model"

    monkeypatch.setattr(segmenter, "exported_segmenter", export)
    with pytest.warns(RuntimeWarning, match=f"runs in torch, its ONNX export cannot be {broken}"):
        lungs = finder.load_lung_finder(weights)
    assert lungs.digest == f"{finder.weights_digest(weights)}|torch"
    lungs.load()
    assert loads[-1][0] == "torch" and loads[-1][2].backend == "torch"


def test_cache_holds_what_prediction_prepares_and_the_engines_are_keyed_apart(xrays, weights, tmp_path, monkeypatch):
    predictor = cxrscreen.load_model(backend="onnx")
    pp = predictor.meta.preprocessing
    lungs = finder.load_lung_finder()
    cached = load_prepared(xrays, pp, cache_dir=tmp_path, progress=False, workers=2, lungs=lungs)
    assert cached.ok == list(range(len(xrays)))
    predicted = predictor.prepare_sources([str(p) for p in xrays], [p.name for p in xrays])
    np.testing.assert_array_equal(cached.images, to_uint8(predicted.inputs))

    # The torch segmenter (the same weights, their export broken) prepares Normal-1295 otherwise: its entries live apart.
    monkeypatch.setattr(segmenter, "exported_segmenter", lambda path: b"not an ONNX model")
    with pytest.warns(RuntimeWarning, match="runs in torch"):
        torch_lungs = finder.load_lung_finder(weights)
    assert torch_lungs.digest.split("|")[0] == lungs.digest.split("|")[0]
    by_torch = load_prepared(xrays[:1], pp, cache_dir=tmp_path, progress=False, lungs=torch_lungs)
    assert not np.array_equal(by_torch.images[0], cached.images[0])
    assert PreparedCache(pp, tmp_path, torch_lungs).root != PreparedCache(pp, tmp_path, lungs).root
    again = load_prepared(xrays[:1], pp, cache_dir=tmp_path, progress=False, lungs=lungs)
    np.testing.assert_array_equal(again.images[0], cached.images[0])


def test_predict_on_both_backends_audit_and_cache_prepare_a_file_alike(xrays, tmp_path):
    """Issue 26: the engine is chosen in one place. Normal-1295 (first) is prepared otherwise by the torch segmenter,
    which the torch backend used to run: every path must give the cache's array, to the bit."""
    predictors = {backend: cxrscreen.load_model(backend=backend) for backend in ("torch", "onnx")}
    pp = predictors["onnx"].meta.preprocessing
    assert pp.needs_lungs and predictors["torch"].lungs == predictors["onnx"].lungs == finder.load_lung_finder()
    files = xrays[:6]
    cached = load_prepared(files, pp, cache_dir=tmp_path, progress=False, lungs=finder.load_lung_finder()).images
    for backend, predictor in predictors.items():
        prepared = predictor.prepare_sources([str(p) for p in files], [p.name for p in files])
        np.testing.assert_array_equal(to_uint8(prepared.inputs), cached, err_msg=backend)
        np.testing.assert_array_equal(to_uint8(predictor.prepare_input(load_xray(files[0])).input), cached[0])
    cfg = AuditConfig()
    images = [load_xray(p) for p in files]
    audited = finder.load_lung_finder(cfg.segmenter).segmenter().segment_batch(images)
    for image, lungs, expected in zip(images, audited, cached):
        if lungs.plausible:  # the audit leaves out images whose lungs are not found
            np.testing.assert_array_equal(audit_inputs(pp, image, lungs.mask, cfg.mask_dilation)[0]["original"], expected)
