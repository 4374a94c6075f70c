"""The training cache's lung finder (issue 17): the segmenter in ONNX Runtime on one thread, as prediction runs it,
torch only when the ONNX export cannot be made or read; the engine is part of the cache key, because the engines
do not give the same prepared image for every X-ray (Normal-1295 is one that differs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import cxrscreen
from cxrscreen.data.cache import PreparedCache, load_prepared
from cxrscreen.data.imageio import to_uint8
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
    lungs = finder.segmenter_lungs(weights)
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
        lungs = finder.segmenter_lungs(weights)
    assert lungs.digest == f"{finder.weights_digest(weights)}|torch"
    lungs.load()
    assert loads[-1][0] == "torch" and loads[-1][2].backend == "torch"


def test_cache_holds_what_prediction_prepares_and_the_engines_are_keyed_apart(xrays, weights, tmp_path, monkeypatch):
    predictor = cxrscreen.load_model(backend="onnx")
    pp = predictor.meta.preprocessing
    lungs = finder.segmenter_lungs()
    cached = load_prepared(xrays, pp, cache_dir=tmp_path, progress=False, workers=2, lungs=lungs)
    assert cached.ok == list(range(len(xrays)))
    predicted = predictor.prepare_batch([str(p) for p in xrays], [p.name for p in xrays])
    np.testing.assert_array_equal(cached.images, to_uint8(predicted.inputs))

    # The torch segmenter (the same weights, their export broken) prepares Normal-1295 otherwise: its entries live apart.
    monkeypatch.setattr(segmenter, "exported_segmenter", lambda path: b"not an ONNX model")
    with pytest.warns(RuntimeWarning, match="runs in torch"):
        torch_lungs = finder.segmenter_lungs(weights)
    assert torch_lungs.digest.split("|")[0] == lungs.digest.split("|")[0]
    by_torch = load_prepared(xrays[:1], pp, cache_dir=tmp_path, progress=False, lungs=torch_lungs)
    assert not np.array_equal(by_torch.images[0], cached.images[0])
    assert PreparedCache(pp, tmp_path, torch_lungs).root != PreparedCache(pp, tmp_path, lungs).root
    again = load_prepared(xrays[:1], pp, cache_dir=tmp_path, progress=False, lungs=lungs)
    np.testing.assert_array_equal(again.images[0], cached.images[0])
