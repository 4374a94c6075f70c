"""Deterministic UIDs: the same source image screened by the same model gives the same result UIDs, so a PACS
that receives a result twice replaces it instead of keeping two."""

from __future__ import annotations

import hashlib
import uuid

# Kinds of result objects, each with its own series.
SR = "sr"
SC = "sc"
KINDS = (SR, SC)


def hashed_uid(*parts: str) -> str:
    """A UID derived from ``parts`` alone: ``2.25.<the 128-bit number of a UUID made of their SHA-256>`` (the
    UUID-derived root of DICOM PS3.5 B.2). ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` would
    ignore the parts and return a random UID."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"


def series_uid(source_sop_uid: str, model_digest: str, kind: str) -> str:
    """SeriesInstanceUID of the ``kind`` result of one source image screened by the model ``model_digest``."""
    return hashed_uid("series", source_sop_uid, model_digest, kind)


def instance_uid(source_sop_uid: str, model_digest: str, kind: str) -> str:
    """SOPInstanceUID of the ``kind`` result of one source image screened by the model ``model_digest``."""
    return hashed_uid("instance", source_sop_uid, model_digest, kind)
