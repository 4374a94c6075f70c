"""Age group of an image (adult / pediatric / mixed / unknown), from what is known about its collection.

An image whose metadata gives an age (ieee8023 and JSRT ``age``) is pediatric under 18 years, adult otherwise.
Without one, the collection decides, per finding where the collection's classes come from different places:
Kermany is pediatric (ages 1-5); the Radiography DB's viral pneumonias are Kermany pictures (pediatric), its COVID
images adult, its normals a mix of adult (RSNA) and pediatric (Kermany) pictures with no way to tell which from
the file; the TB database, Montgomery and JSRT are adult; the Shenzhen set is described by its publishers as
including pediatric X-rays, so it is mixed. Everything else is unknown: never guessed.
"""

from __future__ import annotations

from cxrscreen.data.records import Record
from cxrscreen.data.sources import folder, ieee8023, jsrt, kermany, nlm, radiography

ADULT, PEDIATRIC, MIXED, UNKNOWN = "adult", "pediatric", "mixed", "unknown"
AGE_GROUPS = (ADULT, PEDIATRIC, MIXED, UNKNOWN)
ADULT_FROM_YEARS = 18
ANY_FINDING = "*"

# Collection -> canonical finding (or ANY_FINDING) -> age group, for images whose metadata gives no age.
COLLECTION_AGES: dict[str, dict[str, str]] = {
    kermany.NAME: {ANY_FINDING: PEDIATRIC},
    radiography.NAME: {"covid": ADULT, "viral": PEDIATRIC, "normal": MIXED},
    folder.KNOWN_COLLECTIONS["tb_chest_radiography_database"]: {ANY_FINDING: ADULT},
    nlm.MONTGOMERY: {ANY_FINDING: ADULT},
    nlm.SHENZHEN: {ANY_FINDING: MIXED},
}
# Collections whose metadata gives each image's age: an image without one is unknown.
AGES_PER_IMAGE = frozenset({ieee8023.NAME, jsrt.NAME})


def group_of_age(age: str) -> str:
    """``adult`` / ``pediatric`` for an age in years (``"45"``, ``"7.5"``); ``unknown`` when it is not a number."""
    try:
        years = float(age)
    except ValueError:
        return UNKNOWN
    return ADULT if years >= ADULT_FROM_YEARS else PEDIATRIC


def age_group(record: Record) -> str:
    """The age group of one image: its own age where known, else its collection's (see the module docstring)."""
    age = record.extra.get("age", "")
    if age:
        return group_of_age(age)
    collection = record.source.split("/")[0]
    if collection in AGES_PER_IMAGE:
        return UNKNOWN
    groups = COLLECTION_AGES.get(collection, {})
    return groups.get(record.label) or groups.get(ANY_FINDING, UNKNOWN)
