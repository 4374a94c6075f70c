"""Fixtures of the inference tests: a small real checkpoint (see ``checkpoint_factory``), real X-rays, a temp cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, checkpoint_factory) -> Path:
    return checkpoint_factory(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exports made on first use go to a per-session temp folder, not the user's cache."""
    monkeypatch.setenv("CXRSCREEN_CACHE", str(tmp_path_factory.getbasetemp() / "cxrscreen-cache"))


@pytest.fixture(scope="session")
def real_xrays(radiography_root: Path, shared_data: Path) -> list[Path]:
    """Eight real X-rays from three collections (two sizes: 224 px and ieee8023's up-to-512 px)."""
    picks = [
        *sorted((radiography_root / "COVID" / "images").glob("*.jpg"))[:3],
        *sorted((radiography_root / "Normal" / "images").glob("*.jpg"))[:2],
        *sorted((radiography_root / "Viral Pneumonia" / "images").glob("*.jpg"))[:1],
        *sorted((shared_data / "covid-chestxray-dataset" / "images").glob("*.jpg"))[:2],
    ]
    assert len(picks) == 8
    return picks


@pytest.fixture(scope="session")
def bundled_predictors(tmp_path_factory: pytest.TempPathFactory):
    """The bundled model through both engines, as users load it: ``cxrscreen.load_model(backend="torch")`` (the
    classifier in torch) and ``load_model(backend="onnx")`` (in ONNX Runtime; what ``load_model()`` gives on a CPU),
    both handed the one lung finder (:func:`cxrscreen.lungs.finder.load_lung_finder`)."""
    import cxrscreen
    from cxrscreen.inference.predictor import DEFAULT_MODEL

    if not DEFAULT_MODEL.is_file():
        pytest.skip("bundled default model not trained yet")
    # Session fixtures are set up before the autouse ``onnx_cache``: point the one-time exports at the temp cache here.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CXRSCREEN_CACHE", str(tmp_path_factory.getbasetemp() / "cxrscreen-cache"))
        return {"torch": cxrscreen.load_model(backend="torch"), "onnx": cxrscreen.load_model(backend="onnx")}
