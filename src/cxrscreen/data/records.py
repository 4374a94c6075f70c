"""The one record type every dataset source yields."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Iterator, Mapping


class _NoExtra(Mapping[str, str]):
    """The ``extra`` of the records that have none: empty and read-only, one for all of them rather than a dict per
    record (and pickled as that one)."""

    def __getitem__(self, key: str) -> str:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"

    def __reduce__(self) -> str:
        return "NO_EXTRA"


NO_EXTRA = _NoExtra()


@dataclass(frozen=True, slots=True)
class Record:
    """One chest X-ray in a collection.

    ``label`` is the canonical finding name (see :mod:`cxrscreen.data.labels`), ``raw_label`` what the source
    called it. ``patient_id`` is None where the source does not say. ``source`` names the collection and,
    where the metadata names it, the site (e.g. ``ieee8023/Italy``).

    A collection of 400k images is 400k records, held while a run trains: slots, a shared empty ``extra`` and
    interned labels and sources keep one to its path and about 100 bytes (``benchmarks/train_memory.py``).
    """

    path: str
    label: str
    raw_label: str
    source: str
    patient_id: str | None = None
    extra: Mapping[str, str] = field(default_factory=lambda: NO_EXTRA, compare=False, hash=False)

    def __post_init__(self) -> None:
        # The few distinct labels and sources are shared by all the records that carry them.
        for name in ("label", "raw_label", "source"):
            object.__setattr__(self, name, sys.intern(getattr(self, name)))

    @property
    def collection(self) -> str:
        """The collection part of ``source`` (``ieee8023`` of ``ieee8023/Italy``)."""
        return self.source.split("/")[0]

    @property
    def group_key(self) -> str:
        """Key that keeps one patient's images together; the image itself when the patient is unknown."""
        return f"{self.collection}:{self.patient_id}" if self.patient_id else f"img:{self.path}"
