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
