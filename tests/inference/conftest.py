"""Small real checkpoints (EfficientNet-Lite0 with its ImageNet weights and a random 3-class head, 64 px)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrscreen.data.transforms import Preprocessing
from cxrscreen.models.checkpoint import ModelMeta, save_checkpoint
from cxrscreen.models.registry import create_model

CLASSES = ["covid", "normal", "viral"]


def make_checkpoint(
    path: Path, temperature: float = 1.0, ood: dict | None = None, seed: int = 0, pp: Preprocessing | None = None
) -> Path:
    torch.manual_seed(seed)
    model = create_model("efficientnet_lite0", len(CLASSES), pretrained=True)
    with torch.no_grad():
        # A head with visibly different outputs per image, so probability comparisons mean something.
        model.head.weight.mul_(20.0)
    meta = ModelMeta(
        arch="efficientnet_lite0",
        classes=list(CLASSES),
        preprocessing=pp or Preprocessing(img_size=64),
        name="tiny-test-model",
        version="1",
        temperature=temperature,
        ood=ood or {},
    )
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="session")
def checkpoint_factory():
    """``make(path, temperature=1.0, ood=None, seed=0, pp=None) -> path`` for tests that need their own checkpoint."""
    return make_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


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
