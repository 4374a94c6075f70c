"""The prepared-image disk cache: same result as preparing directly, keyed by content and preprocessing."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrscreen.data import cache as cache_module
from cxrscreen.data.cache import (
    PreparedCache,
    build_cache,
    cache_root,
    load_prepared,
    to_uint8,
)
from cxrscreen.data.transforms import Preprocessing, prepare_from_source
from cxrscreen.errors import ConfigError, DatasetLayoutError, ImageDecodeError, ModelError
from cxrscreen.lungs import segmenter
from cxrscreen.lungs.finder import load_lung_finder

PP = Preprocessing(img_size=64)


@pytest.fixture
def real_images(small_radiography: Path) -> list[Path]:
    """Six real X-rays from two classes (symlinks to the shared data)."""
    covid, normal = (sorted(small_radiography.glob(f"{c}/images/*.jpg"))[:3] for c in ("COVID", "Normal"))
    return covid + normal


def entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("prepared/*/*/*.npy"))


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("decoded although the cache holds the image")

    monkeypatch.setattr(cache_module, "load_xray", fail)


def test_cold_and_warm_match_direct_preparation(tmp_path, real_images, monkeypatch):
    cold = load_prepared(real_images, PP, cache_dir=tmp_path, progress=False)
    expected = np.stack([to_uint8(prepare_from_source(p, PP)) for p in real_images])
    assert cold.images.dtype == np.uint8 and cold.images.shape == (6, 64, 64)
    np.testing.assert_array_equal(cold.images, expected)
    assert cold.ok == list(range(6)) and cold.errors == []
    assert len(entries(tmp_path)) == 6

    forbid_decoding(monkeypatch)
    warm = load_prepared(real_images, PP, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(warm.images, expected)


def test_other_preprocessings_come_from_the_same_decode(tmp_path, real_images, monkeypatch):
    """``also``: one decode per file gives (and caches) every preprocessing asked for; a variant the cache holds
    is not prepared again."""
    thumbnail = Preprocessing(img_size=32)
    decodes, prepared_for = [], []
    decode, prepare = cache_module.load_xray, Preprocessing.prepare
    monkeypatch.setattr(cache_module, "load_xray", lambda data, name: decodes.append(name) or decode(data, name))
    monkeypatch.setattr(Preprocessing, "prepare", lambda pp, image, find=None: prepared_for.append(pp) or prepare(pp, image, find))
    load_prepared(real_images[:2], PP, cache_dir=tmp_path, progress=False)
    decodes.clear(), prepared_for.clear()

    both = load_prepared(real_images, PP, cache_dir=tmp_path, progress=False, also=[thumbnail])
    assert sorted(decodes) == sorted(map(str, real_images))  # the two cached for PP are decoded for the thumbnail
    assert prepared_for.count(PP) == 4 and prepared_for.count(thumbnail) == 6
    np.testing.assert_array_equal(both.images, np.stack([to_uint8(prepare_from_source(p, PP)) for p in real_images]))
    expected_small = np.stack([to_uint8(prepare_from_source(p, thumbnail)) for p in real_images])
    np.testing.assert_array_equal(both.also[0], expected_small)

    forbid_decoding(monkeypatch)
    np.testing.assert_array_equal(load_prepared(real_images, thumbnail, cache_dir=tmp_path, progress=False).images, expected_small)


def test_key_is_file_content_not_name(tmp_path, real_images, monkeypatch):
    cache_dir = tmp_path / "cache"
    load_prepared(real_images[:1], PP, cache_dir=cache_dir, progress=False)
    renamed = tmp_path / "renamed.jpg"
    shutil.copyfile(real_images[0], renamed)
    edited = tmp_path / "edited.png"
    Image.open(real_images[0]).rotate(90).save(edited)

    with monkeypatch.context() as patch:
        forbid_decoding(patch)
        assert load_prepared([renamed], PP, cache_dir=cache_dir, progress=False).ok == [0]
    load_prepared([edited], PP, cache_dir=cache_dir, progress=False)
    assert len(entries(cache_dir)) == 2


def test_preprocessing_change_uses_other_entries(tmp_path, real_images):
    plain = load_prepared(real_images[:2], PP, cache_dir=tmp_path, progress=False)
    hist = Preprocessing(img_size=64, equalize="hist")
    equalized = load_prepared(real_images[:2], hist, cache_dir=tmp_path, progress=False)
    larger = load_prepared(real_images[:2], Preprocessing(img_size=96), cache_dir=tmp_path, progress=False)
    assert not np.array_equal(plain.images, equalized.images)
    assert larger.images.shape == (2, 96, 96)
    assert len({p.parent.parent for p in entries(tmp_path)}) == 3


def test_lung_variant_depends_on_segmenter_weights(tmp_path, monkeypatch):
    weights = tmp_path / "lung_unet.pt"
    monkeypatch.setattr(segmenter, "DEFAULT_WEIGHTS", weights)
    lungs = Preprocessing(img_size=64, lung_mode="crop")
    weights.write_bytes(b"weights one")
    first = PreparedCache(lungs, tmp_path, load_lung_finder()).variant
    weights.write_bytes(b"weights two, retrained")
    second = PreparedCache(lungs, tmp_path, load_lung_finder()).variant
    assert first != second
    # Without lungs the segmenter does not matter.
    assert PreparedCache(PP, tmp_path).variant == PreparedCache(PP, tmp_path / "other").variant


def test_bad_files_are_reported_or_raise(tmp_path, real_images):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(real_images[0].read_bytes()[:300])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    paths = [real_images[0], truncated, tmp_path / "missing.png", real_images[1], text]

    result = load_prepared(paths, PP, cache_dir=tmp_path / "cache", progress=False)
    assert result.ok == [0, 3] and result.images.shape == (2, 64, 64)
    failed = dict(result.errors)
    assert set(failed) == {str(truncated), str(tmp_path / "missing.png"), str(text)}
    assert failed[str(tmp_path / "missing.png")] == "file not found"
    assert all(not reason.startswith(str(tmp_path)) for reason in failed.values())

    with pytest.raises(ImageDecodeError, match=f"^{truncated}: "):
        load_prepared(real_images[:2] + [truncated], PP, cache_dir=tmp_path / "c", progress=False, on_bad_image="fail")
    with pytest.raises(ConfigError, match="on-bad-image"):
        load_prepared(paths, PP, cache_dir=tmp_path / "cache", on_bad_image="ignore")


def test_missing_segmenter_raises_once_instead_of_failing_every_file(tmp_path, real_images, monkeypatch):
    monkeypatch.setattr(segmenter, "DEFAULT_WEIGHTS", tmp_path / "absent.pt")
    with pytest.raises(ModelError, match="absent.pt"):
        load_prepared(real_images, Preprocessing(img_size=64, lung_mode="crop"), cache_dir=tmp_path, progress=False,
                      lungs=load_lung_finder())


def test_lung_focused_preparation_needs_a_lung_finder(tmp_path, real_images, monkeypatch):
    # data imports no segmenter: without one passed in, lung-focused preparation is refused before any file is read.
    forbid_decoding(monkeypatch)
    with pytest.raises(ConfigError, match="load_lung_finder"):
        load_prepared(real_images, Preprocessing(img_size=64, lung_mode="crop"), cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="load_lung_finder"):
        load_prepared(real_images, PP, cache_dir=tmp_path, progress=False, use_cache=False,
                      also=[Preprocessing(img_size=64, lung_mode="mask")])


def test_damaged_entry_is_rebuilt(tmp_path, real_images):
    first = load_prepared(real_images[:1], PP, cache_dir=tmp_path, progress=False)
    (entry,) = entries(tmp_path)
    entry.write_bytes(entry.read_bytes()[:50])
    again = load_prepared(real_images[:1], PP, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again.images, first.images)
    assert np.array_equal(np.load(entry), first.images[0])


def test_without_cache_nothing_is_written(tmp_path, real_images):
    result = load_prepared(real_images, PP, cache_dir=tmp_path, progress=False, use_cache=False)
    assert result.images.shape == (6, 64, 64)
    assert not any(tmp_path.iterdir())


def test_parallel_decoding_matches_serial(tmp_path, small_radiography):
    paths = sorted(small_radiography.glob("*/images/*.jpg"))[:24]
    serial = load_prepared(paths, PP, cache_dir=tmp_path / "a", progress=False, workers=1)
    parallel = load_prepared(paths, PP, cache_dir=tmp_path / "b", progress=False, workers=4)
    np.testing.assert_array_equal(serial.images, parallel.images)


def test_concurrent_builders_leave_valid_entries(tmp_path, small_radiography):
    paths = sorted(small_radiography.glob("*/images/*.jpg"))[:20]
    results = []

    def build() -> None:
        results.append(load_prepared(paths, PP, cache_dir=tmp_path, progress=False, workers=2))

    builders = [threading.Thread(target=build) for _ in range(3)]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join()
    assert len(results) == 3 and all(np.array_equal(r.images, results[0].images) for r in results)
    assert len(entries(tmp_path)) == 20
    assert not list(tmp_path.rglob("*.tmp"))
    for entry in entries(tmp_path):
        assert np.load(entry).shape == (64, 64)


def test_build_cache_counts(tmp_path, small_radiography):
    tree = tmp_path / "data"
    (tree / "a").mkdir(parents=True)
    for path in sorted(small_radiography.glob("COVID/images/*.jpg"))[:4]:
        shutil.copyfile(path, tree / "a" / path.name)
    (tree / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")

    first = build_cache([str(tree)], PP, progress=False, cache_dir=tmp_path / "cache")
    assert (first.cached, first.built) == (0, 4)
    assert [Path(p).name for p, _ in first.failed] == ["broken.png"]
    second = build_cache([str(tree)], PP, progress=False, cache_dir=tmp_path / "cache")
    assert (second.cached, second.built, len(second.failed)) == (4, 0, 1)
    assert second.to_dict()["failed"][0]["path"].endswith("broken.png")

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="empty"):
        build_cache([str(tmp_path / "empty")], PP, progress=False, cache_dir=tmp_path / "cache")


def test_one_cache_root_for_every_cache(tmp_path, monkeypatch):
    """$CXRSCREEN_CACHE, else $XDG_CACHE_HOME/cxrscreen, else ~/.cache/cxrscreen; the pHash and ONNX caches ask it."""
    from cxrscreen.data import dedup
    from cxrscreen.inference import onnx_export

    monkeypatch.setenv("CXRSCREEN_CACHE", str(tmp_path / "somewhere"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "somewhere"
    monkeypatch.delenv("CXRSCREEN_CACHE")
    assert cache_root() == tmp_path / "xdg" / "cxrscreen"
    assert onnx_export.cache_dir() == tmp_path / "xdg" / "cxrscreen" / "onnx"
    assert PreparedCache(PP).root.parent.parent == tmp_path / "xdg" / "cxrscreen"
    dedup.hash_files([], cache_file=True)
    assert (tmp_path / "xdg" / "cxrscreen" / dedup.CACHE_FILE_NAME).is_file()
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "cxrscreen"


def test_tests_never_touch_the_users_cache(tmp_path_factory):
    """tests/conftest.py points $CXRSCREEN_CACHE at a session temporary folder, which subprocesses inherit."""
    session_temp = tmp_path_factory.getbasetemp()
    assert cache_root().is_relative_to(session_temp)
    child = subprocess.run([sys.executable, "-c", "from cxrscreen.data.cache import cache_root; print(cache_root())"],
                           capture_output=True, text=True, check=True)
    assert Path(child.stdout.strip()) == cache_root()


def test_a_new_preparation_version_misses_the_cache(tmp_path, real_images, monkeypatch):
    first = build_cache(real_images[:2], PP, progress=False, cache_dir=tmp_path)
    assert (first.cached, first.built) == (0, 2)
    assert build_cache(real_images[:2], PP, progress=False, cache_dir=tmp_path).cached == 2
    monkeypatch.setattr(cache_module, "PREPARATION_VERSION", cache_module.PREPARATION_VERSION + 1)
    bumped = build_cache(real_images[:2], PP, progress=False, cache_dir=tmp_path)
    assert (bumped.cached, bumped.built) == (0, 2)
    assert len(entries(tmp_path)) == 4
