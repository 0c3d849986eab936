"""Site label maps: how a hospital's label ids and names translate to cardiofm's canonical landmark names.

Every site names its landmarks differently (``"RCC"``, ``"1"``, ``"right coronary cusp hinge"``, ``"RKS"``).
A :class:`LabelMap` holds the translation for one site; :data:`CONVENTIONS` holds a few realistic ones that the
phantom generator uses to make synthetic sites differ, and that real sites can start from.
"""

from __future__ import annotations

import logging
from typing import Final

from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator

from cardiofm.constants import LANDMARK_NAMES
from cardiofm.errors import ConfigError

logger = logging.getLogger(__name__)


def normalize_label(raw: str) -> str:
    """Return the form in which labels are compared: surrounding whitespace stripped, case folded.

    Parameters
    ----------
    raw:
        A label as it appears in an annotation file or a label map.

    Returns
    -------
    str
        The comparison key (``"  Rcc "`` → ``"rcc"``).
    """
    return raw.strip().casefold()


class LabelMap(BaseModel):
    """Translation from a site's label ids/names to canonical landmark names.

    Attributes
    ----------
    aliases:
        ``{site label: canonical name}``. Site labels are matched case-insensitively after stripping
        surrounding whitespace; every target must be one of ``RCC LCC NCC RCO LCO MS1 MS2``. Several site
        labels may map to the same canonical name (the site then uses either spelling).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    aliases: dict[str, str]

    _lookup: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("aliases")
    @classmethod
    def _valid_aliases(cls, aliases: dict[str, str]) -> dict[str, str]:
        seen: dict[str, tuple[str, str]] = {}
        for alias, target in aliases.items():
            key = normalize_label(alias)
            if not key:
                raise ValueError("a label-map alias is empty; every site label needs at least one visible character")
            if target not in LANDMARK_NAMES:
                raise ValueError(
                    f"alias {alias!r} maps to {target!r}, which is not a canonical landmark name; "
                    f"use one of {list(LANDMARK_NAMES)}"
                )
            if key in seen and seen[key][1] != target:
                other_alias, other_target = seen[key]
                raise ValueError(
                    f"aliases {other_alias!r} (→ {other_target}) and {alias!r} (→ {target}) are the same label when "
                    "case and surrounding spaces are ignored, but map to different landmarks; keep only one"
                )
            seen[key] = (alias, target)
        return aliases

    def model_post_init(self, _context: object, /) -> None:
        """Build the normalized lookup table once."""
        self._lookup = {normalize_label(alias): target for alias, target in self.aliases.items()}

    @classmethod
    def identity(cls) -> LabelMap:
        """Label map in which every canonical name (``RCC`` … ``MS2``) maps to itself."""
        return cls(aliases={name: name for name in LANDMARK_NAMES})

    def canonical(self, raw: str) -> str | None:
        """Canonical name of a site label, or ``None`` if the label is not in this map.

        Parameters
        ----------
        raw:
            The label exactly as read from the annotation file (case and surrounding spaces do not matter).
        """
        return self._lookup.get(normalize_label(raw))

    def site_names(self) -> dict[str, str]:
        """Inverse map ``{canonical name: site label}``, in canonical order, for writers.

        Where several site labels map to one canonical name the first one (in ``aliases`` order) is used;
        canonical names without any alias are absent.
        """
        inverse: dict[str, str] = {}
        for alias, target in self.aliases.items():
            inverse.setdefault(target, alias)
        return {name: inverse[name] for name in LANDMARK_NAMES if name in inverse}


def _convention(site_labels: tuple[str, ...]) -> LabelMap:
    """Label map whose i-th site label names the i-th canonical landmark."""
    if len(site_labels) != len(LANDMARK_NAMES):
        raise ValueError(f"a convention needs exactly {len(LANDMARK_NAMES)} labels, got {len(site_labels)}")
    return LabelMap(aliases=dict(zip(site_labels, LANDMARK_NAMES, strict=True)))


#: Named site conventions; each lists one site label per canonical landmark (``RCC LCC NCC RCO LCO MS1 MS2``).
CONVENTIONS: Final[dict[str, LabelMap]] = {
    # cardiofm's own names.
    "canonical": LabelMap.identity(),
    # The reference work's code names: ACC = acoronary (non-coronary) cusp, RCA/LCA = coronary ostia.
    "reference": _convention(("RCC", "LCC", "ACC", "RCA", "LCA", "MS1", "MS2")),
    # Numbered points starting at 1 (a common tool default).
    "numeric": _convention(("1", "2", "3", "4", "5", "6", "7")),
    # Numbered points starting at 0 (MITK point ids start at 0).
    "zero_based": _convention(("0", "1", "2", "3", "4", "5", "6")),
    # Descriptive English names.
    "verbose": _convention(
        (
            "right coronary cusp hinge",
            "left coronary cusp hinge",
            "non-coronary cusp hinge",
            "RCA ostium",
            "LCA ostium",
            "MS upper",
            "MS lower",
        )
    ),
    # German clinical names: rechts-/links-/akoronare Tasche, Koronarabgänge, Septum oben/unten.
    "german": _convention(("RKS", "LKS", "AKS", "RCA-Abgang", "LCA-Abgang", "MS oben", "MS unten")),
}


def site_names(convention: str) -> dict[str, str]:
    """Canonical name → site label of a named convention, for writers that produce site files.

    Parameters
    ----------
    convention:
        A key of :data:`CONVENTIONS` (``"canonical"``, ``"reference"``, ``"numeric"``, ``"zero_based"``,
        ``"verbose"``, ``"german"``).

    Raises
    ------
    ConfigError
        If the convention is unknown.
    """
    try:
        label_map = CONVENTIONS[convention]
    except KeyError:
        raise ConfigError(f"unknown label convention {convention!r}; choose one of {sorted(CONVENTIONS)}") from None
    return label_map.site_names()
