"""The one record type every dataset source yields."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Record:
    """One chest X-ray in a collection.

    ``label`` is the canonical finding name (see :mod:`cxrscreen.data.labels`), ``raw_label`` what the source
    called it. ``patient_id`` is None where the source does not say. ``source`` names the collection and,
    where the metadata names it, the site (e.g. ``ieee8023/Italy``).
    """

    path: str
    label: str
    raw_label: str
    source: str
    patient_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def collection(self) -> str:
        """The collection part of ``source`` (``ieee8023`` of ``ieee8023/Italy``)."""
        return self.source.split("/")[0]

    @property
    def group_key(self) -> str:
        """Key that keeps one patient's images together; the image itself when the patient is unknown."""
        return f"{self.collection}:{self.patient_id}" if self.patient_id else f"img:{self.path}"
