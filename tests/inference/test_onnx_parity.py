"""ONNX export: self-describing file, dynamic batch, and ONNX Runtime agreeing with torch on real X-rays."""

from __future__ import annotations

import os

from pathlib import Path
from unittest.mock import patch

import numpy as np
import onnx
import pytest

from cxrscreen.data.transforms import prepare_from_source
from cxrscreen.errors import ModelError
from cxrscreen.inference.onnx_export import export_onnx
from cxrscreen.inference.onnx_runtime import GRAPH_FILE, GUARD_FILE, META_FILE, OnnxRuntimeBackend, read_onnx_meta
from cxrscreen.models.onnx import cache_dir
from cxrscreen.inference.predictor import load_predictor
from cxrscreen.models.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_export_is_self_describing(exported: Path, tiny_checkpoint: Path) -> None:
    _, meta = load_checkpoint(tiny_checkpoint)
    assert read_onnx_meta(exported) == meta
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["logits", "features", "maps"]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value


@pytest.mark.parametrize("optimization", ["all", "disabled"])
def test_onnx_runtime_matches_torch_on_real_xrays(
    optimization: str, exported: Path, tiny_checkpoint: Path, real_xrays: list[Path]
) -> None:
    torch_predictor = load_predictor(tiny_checkpoint, backend="torch")
    onnx_predictor = load_predictor(exported, backend="onnx", onnx_optimization=optimization)
    images = np.stack([prepare_from_source(p, torch_predictor.meta.preprocessing) for p in real_xrays])
    torch_probs, torch_features, _ = torch_predictor.predict_prepared(images)
    onnx_probs, onnx_features, _ = onnx_predictor.predict_prepared(images)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_features, torch_features, atol=1e-3, rtol=1e-3)
    # Dynamic batch: one image at a time gives the same answers as the batch of eight.
    single = np.concatenate([onnx_predictor.predict_prepared(images[i : i + 1])[0] for i in range(len(images))])
    np.testing.assert_allclose(single, onnx_probs, atol=1e-5)
    assert np.ptp(torch_probs, axis=0).max() > 0.05


def test_guard_network_gives_the_same_features_in_onnx_runtime(real_xrays: list[Path], tmp_path, monkeypatch) -> None:
    from cxrscreen.guard.onnx import OnnxGuardRunner
    from cxrscreen.guard.inputs import guard_thumbnails
    from cxrscreen.guard.network import torch_guard_features

    monkeypatch.setenv("CXRSCREEN_CACHE", str(tmp_path))
    thumbnails, _ = guard_thumbnails(real_xrays)
    expected = torch_guard_features(thumbnails)
    np.testing.assert_allclose(OnnxGuardRunner(threads=1)(thumbnails), expected, atol=1e-4)
    assert expected.shape == (len(real_xrays), 4 * 2 * 192)
    assert np.ptp(expected, axis=0).max() > 0.05  # different images, different features
    assert len(list((tmp_path / "onnx").glob("guard-*.onnx"))) == 1


def test_checkpoint_is_exported_once_to_the_cache(
    tiny_checkpoint: Path, real_xrays: list[Path], tmp_path, monkeypatch, capfd
) -> None:
    monkeypatch.setenv("CXRSCREEN_CACHE", str(tmp_path))
    first = load_predictor(tiny_checkpoint, backend="onnx")
    bundles = [path for path in cache_dir().iterdir() if path.is_dir()]
    assert len(bundles) == 1 and sorted(f.name for f in bundles[0].iterdir()) == sorted([GRAPH_FILE, GUARD_FILE, META_FILE])
    assert f"preparing {tiny_checkpoint.name} for ONNX Runtime once" in capfd.readouterr().err
    stamp = (bundles[0] / GRAPH_FILE).stat().st_mtime_ns
    second = load_predictor(tiny_checkpoint, backend="onnx")
    assert (bundles[0] / GRAPH_FILE).stat().st_mtime_ns == stamp
    assert capfd.readouterr().err == ""  # found in the cache: nothing said
    assert second.meta == load_checkpoint(tiny_checkpoint)[1]
    # The cached export is the same network as the checkpoint: compared with torch, not with another ONNX run.
    expected = load_predictor(tiny_checkpoint, backend="torch").predict(real_xrays[0]).probabilities
    for predictor in (first, second):
        assert predictor.predict(real_xrays[0]).probabilities == pytest.approx(expected, abs=1e-4)
    assert first.backend_name == "onnx" and first.meta.classes == ["covid", "normal", "viral"]


def test_an_unwritable_cache_exports_once_into_a_private_fallback(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch, capfd
) -> None:
    """A cache that cannot be written: the export goes to a private folder in the temp dir, which the next run finds
    (no export every run, nothing left behind per run) and the message says where it really is."""
    import tempfile

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    monkeypatch.setenv("CXRSCREEN_CACHE", str(blocker / "cache"))  # unwritable even for root
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    load_predictor(tiny_checkpoint, backend="onnx")
    err = capfd.readouterr().err
    (fallback,) = (tmp_path / "tmp").iterdir()
    assert fallback.name == f"cxrscreen-cache-{os.getuid()}" and fallback.stat().st_mode & 0o777 == 0o700
    (bundle,) = [path for path in (fallback / "onnx").iterdir() if path.is_dir()]
    assert f"cached in {bundle} ({blocker / 'cache' / 'onnx'} cannot be written)" in err
    assert str(blocker) + "/cache/onnx/" not in err  # never "cached in" the path that cannot be written
    stamp = (bundle / GRAPH_FILE).stat().st_mtime_ns
    load_predictor(tiny_checkpoint, backend="onnx")
    assert capfd.readouterr().err == "" and (bundle / GRAPH_FILE).stat().st_mtime_ns == stamp
    assert [path.name for path in (tmp_path / "tmp").iterdir()] == [fallback.name]


def test_a_fallback_folder_another_user_could_fill_is_not_used(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    from cxrscreen.models.onnx import fallback_cache_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shared = tmp_path / f"cxrscreen-cache-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # world-writable: someone could have put a graph there
    own = fallback_cache_dir()
    assert own.parent != shared and own.parent.parent == tmp_path and own.parent.stat().st_mode & 0o077 == 0


def test_foreign_files_are_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="^" + str(junk)):
        load_predictor(junk, backend="onnx")
    plain = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], [])), str(plain))
    with pytest.raises(ModelError, match="no cxrscreen metadata"):
        read_onnx_meta(plain)
    with pytest.raises(ModelError, match="cannot load"):
        OnnxRuntimeBackend(junk)


def test_an_export_explains_as_the_checkpoint_does(exported: Path, tiny_checkpoint: Path, real_xrays: list[Path],
                                                   tmp_path: Path) -> None:
    """The graph's Grad-CAM maps: an .onnx file explains without its checkpoint, as the checkpoint's autograd
    Grad-CAM does; an export without maps (made before they were in the graph) says it needs the checkpoint."""
    from_onnx, from_torch = load_predictor(exported, backend="onnx"), load_predictor(tiny_checkpoint, backend="torch")
    assert from_onnx.backend.explains
    peaks = []
    for path in real_xrays[:3]:
        for target in from_onnx.classes:
            onnx_map = from_onnx.explain(path, target=target, overlay=False).heatmap
            with patch.object(type(from_torch.backend), "explains", False):  # autograd on the torch network
                torch_map = from_torch.explain(path, target=target, overlay=False).heatmap
            assert np.abs(onnx_map - torch_map).max() < 1e-3
            peaks.append(onnx_map.max())
    assert max(peaks) > 0.9  # (an untrained model's map of a class can be all zero: no positive evidence)
    proto = onnx.load(str(exported))
    proto.graph.output.pop()  # the maps
    without_maps = tmp_path / "old.onnx"
    onnx.save(proto, str(without_maps))
    old = load_predictor(without_maps, backend="onnx")
    assert not old.backend.explains and old.predict(real_xrays[0]).probabilities == from_onnx.predict(real_xrays[0]).probabilities
    with pytest.raises(ModelError, match="Grad-CAM needs the torch checkpoint"):
        old.explain(real_xrays[0])


# -- the bundled model through the whole path: lung segmentation, crop, mask, CLAHE, network, guard -----------------

LUNGS_NOT_FOUND = "COVID/images/COVID-102.jpg"  # the segmenter finds no plausible lungs: the typical lung fields are used


def bundled_parity_cases(radiography_root: Path) -> list[Path]:
    """Two images of each class where the lungs are found, and one where they are not."""
    folders = ("COVID", "Normal", "Viral Pneumonia")
    found = [path for folder in folders for path in sorted((radiography_root / folder / "images").glob("*.jpg"))[5:7]]
    return [*found, radiography_root / LUNGS_NOT_FOUND]


def test_bundled_model_gives_the_same_answers_in_torch_and_onnx_runtime(bundled_predictors, radiography_root: Path) -> None:
    """``load_model()`` and ``load_model(backend="onnx")`` differ in the engine of the classifier and of the lung
    segmenter; everything else (crop, mask, CLAHE, guard) must follow, so the answers agree on real X-rays."""
    cases = bundled_parity_cases(radiography_root)
    torch_results = bundled_predictors["torch"].predict_batch(cases)
    onnx_results = bundled_predictors["onnx"].predict_batch(cases)
    assert [r.lungs_found for r in torch_results] == [True] * (len(cases) - 1) + [False]
    assert [r.lungs_found for r in onnx_results] == [r.lungs_found for r in torch_results]
    assert [r.label for r in onnx_results] == [r.label for r in torch_results]
    # Log-probabilities are the logits up to a constant per image: they show a difference that a confident
    # model's probabilities (0.9999...) would hide.
    torch_log = np.log([list(r.probabilities.values()) for r in torch_results])
    onnx_log = np.log([list(r.probabilities.values()) for r in onnx_results])
    np.testing.assert_allclose(onnx_log, torch_log, atol=2e-3)
    np.testing.assert_allclose([r.ood_score for r in onnx_results], [r.ood_score for r in torch_results], rtol=1e-4)
