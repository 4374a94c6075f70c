"""Shared fixtures: the real X-rays in ../shared/data (never copied into the repo) and small trees built from them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from cxrscreen.data.transforms import Preprocessing
from cxrscreen.models.checkpoint import ModelMeta, save_checkpoint
from cxrscreen.models.factory import create_model
from subsets import link_subset

SHARED_DATA = Path(os.environ.get("CXRSCREEN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every test, and every subprocess one starts, caches under a session temporary folder, never in the user's
    ``~/.cache/cxrscreen`` (whose stale entries would hide bugs, and which tests must not fill)."""
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.getbasetemp() / "cxrscreen-cache"
        patch.setenv("CXRSCREEN_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real data; the suite needs it (CI lays ../shared beside the clone)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}; set CXRSCREEN_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def radiography_root(shared_data: Path) -> Path:
    return shared_data / "COVID-19_Radiography_Dataset"


@pytest.fixture(scope="session")
def small_radiography(tmp_path_factory: pytest.TempPathFactory, radiography_root: Path) -> Path:
    """12 images per class of the Radiography DB, in its published layout (symlinks to the real files)."""
    return link_subset(radiography_root, tmp_path_factory.mktemp("radiography") / "COVID-19_Radiography_Dataset", 12)


@pytest.fixture
def copy_file(tmp_path: Path):
    def _copy(src: Path, name: str | None = None) -> Path:
        dst = tmp_path / (name or src.name)
        shutil.copyfile(src, dst)
        return dst

    return _copy


TINY_CLASSES = ["covid", "normal", "viral"]


def make_checkpoint(path: Path, seed: int = 0, head_scale: float = 20.0, pp: Preprocessing | None = None, **meta_fields) -> Path:
    """A small real checkpoint: EfficientNet-Lite0 with its ImageNet weights and a random 3-class head (64 px).

    ``head_scale`` makes the head's outputs differ visibly between images, so probability comparisons mean
    something; ``meta_fields`` go into :class:`ModelMeta` (name, version, temperature, ood, train_hashes, ...).
    """
    torch.manual_seed(seed)
    model = create_model("efficientnet_lite0", len(TINY_CLASSES), pretrained=True)
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
    meta = ModelMeta(arch="efficientnet_lite0", classes=list(TINY_CLASSES), preprocessing=pp or Preprocessing(img_size=64),
                     **{"name": "tiny-test-model", "version": "1", **meta_fields})
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="session")
def checkpoint_factory():
    """``make(path, seed=0, head_scale=20.0, pp=None, **meta_fields) -> path`` for tests that need a checkpoint."""
    return make_checkpoint
