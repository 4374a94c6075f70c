"""A checkpoint is one self-describing file: everything round-trips, and a bad file is a one-line ModelError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrscreen.data.transforms import Preprocessing
from cxrscreen.errors import ModelError
from cxrscreen.models.checkpoint import ModelMeta, load_checkpoint, read_checkpoint, save_checkpoint
from cxrscreen.models.factory import create_model


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


def test_a_shipping_copy_drops_resuming_state_and_a_half_copy_loads_back_close(tmp_path):
    import torch

    from cxrscreen.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, save_shipping_copy
    from cxrscreen.models.meta import ModelMeta
    from cxrscreen.models.factory import create_model
    from cxrscreen.data.transforms import Preprocessing

    model = create_model("efficientnet_lite0", 2, pretrained=False).eval()
    meta = ModelMeta(arch="efficientnet_lite0", classes=["covid", "other"], preprocessing=Preprocessing(img_size=64))
    source = tmp_path / "last.pt"
    save_checkpoint(source, model, meta, extra={"optimizer": {"step": 3}})
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    save_shipping_copy(source, full)
    save_shipping_copy(source, half, half=True)
    assert "extra" not in read_checkpoint(full) and "extra" not in read_checkpoint(half)
    assert read_checkpoint(half)["state_dict"]["head.weight"].dtype == torch.float16
    assert half.stat().st_size < 0.6 * full.stat().st_size
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        reference = model(x)
        assert torch.equal(load_checkpoint(full)[0](x), reference)
        widened = load_checkpoint(half)[0]
        assert next(widened.parameters()).dtype == torch.float32
        assert torch.allclose(widened(x), reference, atol=0.05)
