"""One label-mapping mechanism, shared by train, evaluate and predict.

Two steps:

1. ``ALIASES`` maps what a source calls a finding onto a *canonical finding* (``covid``, ``normal``, ``viral``,
   ``bacterial``, ``tuberculosis``, ``lung_opacity``, ``fungal``, ``other_pneumonia``, ``nodule``).
2. A :class:`LabelSet` (the task's classes, chosen with ``--classes``) groups canonical findings into classes:
   ``covid,normal,viral`` keeps three findings as they are, ``covid,other`` puts every non-COVID finding into
   ``other``, ``covid,normal,viral,lung_infection`` forms ``lung_infection`` from bacterial pneumonia,
   tuberculosis, fungal pneumonia and lung opacity.

Findings a task has no class for are dropped, and the caller reports how many.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cxrscreen.errors import ConfigError

# Source label (lower-cased, stripped) -> canonical finding.
ALIASES: dict[str, str] = {
    # COVID-19 Radiography Database
    "covid": "covid",
    "normal": "normal",
    "viral pneumonia": "viral",
    "lung_opacity": "lung_opacity",
    "lung opacity": "lung_opacity",
    # Kermany chest_xray (PNEUMONIA is split by file name into bacteria / virus)
    "bacteria": "bacterial",
    "virus": "viral",
    # TB database, NLM Montgomery / Shenzhen
    "tuberculosis": "tuberculosis",
    "tb": "tuberculosis",
    # JSRT (JPCLN / JPCNN file names)
    "nodule": "nodule",
    "non-nodule": "normal",
    # ieee8023 covid-chestxray-dataset `finding`
    "covid-19": "covid",
    "covid-19, ards": "covid",
    "pneumonia/viral/covid-19": "covid",
    "no finding": "normal",
    "sars": "viral",
    "influenza": "viral",
    "varicella": "viral",
    "mers": "viral",
    "streptococcus": "bacterial",
    "klebsiella": "bacterial",
    "mycoplasma bacterial pneumonia": "bacterial",
    "legionella": "bacterial",
    "e.coli": "bacterial",
    "bacterial": "bacterial",
    "chlamydophila": "bacterial",
    "staphylococcus": "bacterial",
    "pneumocystis": "fungal",
    "aspergillosis": "fungal",
    "pneumonia": "other_pneumonia",
    "ards": "other_pneumonia",
    "lipoid": "other_pneumonia",
    # generic folder names
    "bacterial pneumonia": "bacterial",
    "viral": "viral",
    "covid19": "covid",
    "covid-19 pneumonia": "covid",
    "healthy": "normal",
}

CANONICAL_FINDINGS = frozenset(ALIASES.values())

# Task class -> canonical findings it is made of; "other" is special: every finding not named by another class.
CLASS_GROUPS: dict[str, frozenset[str]] = {
    "covid": frozenset({"covid"}),
    "normal": frozenset({"normal"}),
    "viral": frozenset({"viral"}),
    "bacterial": frozenset({"bacterial"}),
    "tuberculosis": frozenset({"tuberculosis"}),
    "lung_opacity": frozenset({"lung_opacity"}),
    "nodule": frozenset({"nodule"}),
    "lung_infection": frozenset({"bacterial", "tuberculosis", "fungal", "lung_opacity"}),
    "pneumonia": frozenset({"viral", "bacterial", "fungal", "other_pneumonia", "covid"}),
}
OTHER = "other"

PRESETS: dict[str, tuple[str, ...]] = {
    "3class": ("covid", "normal", "viral"),
    "binary": ("covid", "other"),
    "4class": ("covid", "normal", "viral", "lung_infection"),
}
DEFAULT_CLASSES: tuple[str, ...] = PRESETS["3class"]


def canonical_finding(raw_label: str) -> str | None:
    """Canonical finding for a source's label, or None when the alias table does not know it."""
    key = raw_label.strip().lower()
    if key in CANONICAL_FINDINGS:
        return key
    return ALIASES.get(key)


@dataclass(frozen=True)
class LabelSet:
    """The classes of a task and how canonical findings map onto them.

    ``extra`` holds user mappings (``--label-map finding=class``) that take precedence over ``CLASS_GROUPS``.
    """

    classes: tuple[str, ...]
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ConfigError(f"--classes needs at least two classes, got {','.join(self.classes) or 'none'}")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"--classes names a class twice: {','.join(self.classes)}")
        unknown = [c for c in self.classes if c not in CLASS_GROUPS and c != OTHER and c not in self.extra.values()]
        if unknown:
            known = ", ".join(sorted([*CLASS_GROUPS, OTHER]))
            raise ConfigError(f"unknown class name(s) {', '.join(unknown)} in --classes; known: {known}")
        bad_targets = [c for c in self.extra.values() if c not in self.classes]
        if bad_targets:
            raise ConfigError(f"--label-map maps onto {', '.join(bad_targets)}, which is not in --classes")

    @classmethod
    def parse(cls, spec: str | None, label_map: dict[str, str] | None = None) -> "LabelSet":
        """Build from ``covid,normal,viral`` or a preset name (``3class``, ``binary``, ``4class``)."""
        spec = (spec or ",".join(DEFAULT_CLASSES)).strip()
        classes = PRESETS.get(spec) or tuple(c.strip().lower() for c in spec.split(",") if c.strip())
        extra = {k.strip().lower(): v.strip().lower() for k, v in (label_map or {}).items()}
        return cls(tuple(classes), extra)

    def class_of(self, label: str) -> str | None:
        """Task class for a canonical finding (or a raw source label), or None when the task has none."""
        key = label.strip().lower()
        if key in self.extra:
            return self.extra[key]
        finding = canonical_finding(key)
        if finding is None:
            return None
        if finding in self.extra:
            return self.extra[finding]
        for name in self.classes:
            if name != OTHER and finding in CLASS_GROUPS.get(name, frozenset({name})):
                return name
        return OTHER if OTHER in self.classes else None

    def to_dict(self) -> dict:
        return {"classes": list(self.classes), "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, data: dict) -> "LabelSet":
        return cls(tuple(data["classes"]), dict(data.get("extra", {})))


def parse_label_map(pairs: list[str] | None) -> dict[str, str]:
    """Parse ``--label-map FROM=TO`` arguments."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--label-map expects FROM=TO, got {pair!r}")
        src, dst = pair.split("=", 1)
        out[src.strip().lower()] = dst.strip().lower()
    return out
