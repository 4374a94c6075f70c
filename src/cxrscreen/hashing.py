"""File and content hashes, in one place: the keys of cxrscreen's caches (BLAKE2b, 128 bits: fast, and long enough
that two different files never share a key) and the checksums others publish (SHA-256). Top level, so that every
layer can ask it."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


def content_hash(data: bytes) -> str:
    """The cache key of some bytes (32 hex digits)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_hash(path: Path) -> str:
    """:func:`content_hash` of a file, read once per process for as long as its size and modification time stay."""
    stat = Path(path).stat()
    return _file_hash(Path(path).resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _file_hash(path: Path, mtime_ns: int, size: int) -> str:
    return content_hash(path.read_bytes())


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file (hex), read in 1 MiB chunks: to check a checksum its publisher gives, or to name a model
    file (the audit log, the metrics and the DICOM results all name it; read once per process while it stays)."""
    stat = Path(path).stat()
    return _file_sha256(Path(path).resolve(), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _file_sha256(path: Path, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
