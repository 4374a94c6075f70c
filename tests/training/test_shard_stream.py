"""``train --shards``' stream: webdataset splits the shards by rank and loader worker; every rank takes the same
number of batches; each sample is seen exactly once per epoch across 2 ranks x 2 workers (shards that divide
evenly) or at least once (uneven shards, padded by repetition); an epoch streams the same batches every time; an
http server serves the same stream as the folder."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import webdataset as wds

from cxrscreen.errors import ConfigError, DatasetLayoutError
from cxrscreen.io_utils import write_json
from cxrscreen.training.shard_data import ShardSet, ShardStream, read_manifest

BATCH = 4


def write_test_shards(folder: Path, counts: list[int]) -> list[str]:
    """Shards of tiny random images (``counts[i]`` samples in shard ``i``) and their manifest; the keys written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    keys, shards = [], []
    for number, count in enumerate(counts):
        name = f"shard-{number:06d}.tar"
        with wds.TarWriter(str(folder / name)) as sink:
            for i in range(count):
                key = f"{number:03d}{i:03d}"
                sink.write({"__key__": key, "png": rng.integers(0, 256, (8, 8), dtype=np.uint8), "cls": i % 3,
                            "json": {"collection": ("a", "b")[i % 2]}})
                keys.append(key)
        shards.append({"name": name, "samples": count})
    write_json(folder / "manifest.json", {"format": "webdataset", "shards": shards, "samples": sum(counts), "side": "train"})
    return keys


def rank_keys(folder: str, rank: int, world_size: int, epoch: int, monkeypatch: pytest.MonkeyPatch,
              workers: int = 2) -> list[list[str]]:
    """The keys of each batch rank ``rank`` of ``world_size`` streams in ``epoch`` (RANK/WORLD_SIZE as torchrun sets them)."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    stream = ShardStream(ShardSet(folder, read_manifest(folder)), BATCH, seed=0, collections=["a", "b"], workers=workers)
    batches = list(stream.batches(epoch))
    assert len(batches) == stream.steps_per_epoch
    for batch in batches:
        assert batch.images.shape == (BATCH, 8, 8) and batch.images.dtype == np.uint8
        assert batch.sources.tolist() == [int(key[-3:]) % 2 for key in batch.keys]
        assert batch.targets.tolist() == [int(key[-3:]) % 3 for key in batch.keys]
    return [batch.keys for batch in batches]


def test_each_sample_once_per_epoch_across_2_ranks_x_2_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_test_shards(tmp_path / "shards", [6] * 8)
    folder = str(tmp_path / "shards")
    epoch1 = [rank_keys(folder, rank, 2, 1, monkeypatch) for rank in (0, 1)]
    assert [len(batches) for batches in epoch1] == [6, 6]  # 24 samples per rank, batches of 4
    seen = [key for batches in epoch1 for batch in batches for key in batch]
    assert sorted(seen) == sorted(written)  # exactly once
    # Each rank reads its own shards (split_by_node), each worker its own of those (split_by_worker).
    shards_of = [{key[:3] for batch in batches for key in batch} for batches in epoch1]
    assert shards_of[0].isdisjoint(shards_of[1]) and len(shards_of[0]) == len(shards_of[1]) == 4
    first = epoch1[0][0]  # the loader takes a worker's batch of samples at a time: all of one worker's shards
    assert len({key[:3] for key in first}) <= 2

    assert rank_keys(folder, 0, 2, 1, monkeypatch) == epoch1[0]  # an epoch run again streams the same batches
    epoch2 = rank_keys(folder, 0, 2, 2, monkeypatch)
    assert epoch2 != epoch1[0] and sorted(sum(epoch2, [])) == sorted(sum(epoch1[0], []))


def test_uneven_shards_give_every_rank_the_same_number_of_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_test_shards(tmp_path / "shards", [6, 6, 6, 6, 5])
    folder = str(tmp_path / "shards")
    ranks = [rank_keys(folder, rank, 2, 1, monkeypatch) for rank in (0, 1)]
    assert [len(batches) for batches in ranks] == [5, 5]  # ceil(17 / 4): rank 0 holds 17 samples, rank 1 12
    seen = [[key for batch in batches for key in batch] for batches in ranks]
    assert sorted(set(seen[0]) | set(seen[1])) == sorted(written)  # nothing skipped
    assert len(set(seen[1])) == 12 and len(seen[1]) == 20  # rank 1 pads by repeating its stream's first samples
    assert seen[1][12:] == seen[1][:8]


def test_fewer_shards_than_ranks_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_test_shards(tmp_path / "shards", [6])
    with pytest.raises(ConfigError, match="1 shard\\(s\\) for 2 ranks"):
        rank_keys(str(tmp_path / "shards"), 0, 2, 1, monkeypatch)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over http on 127.0.0.1 (a thread), and its URL."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/shards/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_shards_stream_over_http_as_from_the_folder(http_root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = http_root
    write_test_shards(root / "shards", [6] * 4)
    for rank in (0, 1):
        assert rank_keys(url, rank, 2, 1, monkeypatch) == rank_keys(str(root / "shards"), rank, 2, 1, monkeypatch)
    with pytest.raises(DatasetLayoutError, match="missing/manifest.json: cannot read the shards' manifest"):
        read_manifest(url.replace("shards", "missing"))
