"""A checkpoint is one self-describing file: everything round-trips, and a bad file is a one-line ModelError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrscreen.data.transforms import Preprocessing
from cxrscreen.errors import ModelError
from cxrscreen.models.checkpoint import ModelMeta, load_checkpoint, read_checkpoint, save_checkpoint
from cxrscreen.models.registry import create_model


def test_weights_and_meta_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 4, pretrained=False).eval()
    meta = ModelMeta(
        arch="efficientnet_lite0", classes=["covid", "normal", "viral", "lung_infection"],
        preprocessing=Preprocessing(img_size=96, lung_mode="crop", equalize="clahe"), label_map={"lung_opacity": "lung_infection"},
        temperature=1.3, metrics={"test": {"accuracy": {"value": 0.9}}}, ood={"method": "x"}, train_hashes=["ab" * 32],
        train_summary={"images_per_split": {"train": {"covid": 3}}}, config={"seed": 0},
    )
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert loaded_meta.label_set.class_of("Lung_Opacity") == "lung_infection"
    x = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    "content, message",
    [(b"", "not a readable cxrscreen model"), (b"not a checkpoint", "not a readable cxrscreen model")],
)
def test_corrupt_files_are_model_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as info:
        read_checkpoint(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_foreign_and_newer_files_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ModelError, match="not a cxrscreen model file"):
        read_checkpoint(foreign)
    newer = tmp_path / "newer.pt"
    torch.save({"format": "cxrscreen-checkpoint", "format_version": 99, "meta": {}, "state_dict": {}}, newer)
    with pytest.raises(ModelError, match="newer cxrscreen"):
        read_checkpoint(newer)
    with pytest.raises(ModelError, match="model file not found"):
        read_checkpoint(tmp_path / "absent.pt")
