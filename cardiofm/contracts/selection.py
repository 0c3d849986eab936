"""Series selection: the per-site rules and the JSON report of which series was chosen per study.

A cardiac CT study holds several series (localizer, calcium score, several phases, thick and derived
reconstructions); the ``select-series`` step picks the one fit for TAVI planning. The rules live here
so that they can sit in a site's configuration; the report says, per study and per series, what was
accepted and, for every rejected series, each rule it failed.

Only the standard library and pydantic are imported, so the Airflow (DAG) image can load it. Nothing
here holds patient names, ids or dates; study and series UIDs are site-local provenance.

Pattern matching
----------------
Every pattern (``description_include``, ``description_exclude``, ``kernels_preferred``) is a
**case-insensitive regular expression searched anywhere** in the value (:func:`re.search`), so
``"score"`` matches ``"CaScore 3.0 Qr36"`` and ``"^Bv36$"`` only the kernel ``Bv36``. Patterns are
compiled when the rules are built; an invalid one is a validation error.

Contrast
--------
With ``contrast="required"`` a series that passed every header rule is checked on its pixels: the
*blood-pool estimate* is the median HU of the blood-pool-like voxels in five slices sampled over the
central 60 % of the series: voxels within 35 mm of the image centre (cardiac reconstructions are
centred on the heart), at or above 0.8 x ``contrast_min_hu`` after a 3x3 median filter, and at least
8 mm deep inside such a bright region (so ribs, sternum, calcium and noise do not count, the aortic
root and the chambers do). When fewer than 200 mm² of such voxels exist, there is no enhanced blood
pool and the estimate is the median HU of the central disks (soft tissue, 40-70 HU in a native
scan). The pixels overrule ContrastBolusAgent in both directions (the GE-like habit of writing no
tag, or a tag copied onto a native series); only when the pixels cannot be read is the tag trusted.

Cardiac phase
-------------
A series' phase (percent of the R-R interval) is NominalPercentageOfCardiacPhase, else TriggerTime
converted with HeartRate, else a ``"NN%"`` in the series description. Distances are circular
(``0 %`` and ``100 %`` are the same instant). With ``preferred_phase_percent`` set, a series whose
known phase lies more than ``phase_tolerance_percent`` away is rejected; a series of unknown phase is
kept but ranked after every series of matching phase. Without it, nothing is rejected by phase and
the series nearest :data:`FALLBACK_PHASE_PERCENT` (mid-systole, where TAVI annulus measurements are
taken) ranks first, unknown phases last.
"""

from __future__ import annotations

import re
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cardiofm.contracts.site import SiteConfig

#: Phase (percent R-R) ranked first when a site names no preferred phase: mid-systole, as CT for
#: TAVI planning measures the annulus in systole (30-40 %).
FALLBACK_PHASE_PERCENT: Final[int] = 40

#: Series descriptions excluded by default (localizers, calcium scoring, derived reconstructions).
DEFAULT_DESCRIPTION_EXCLUDE: Final[tuple[str, ...]] = (
    "score",
    "scout",
    "topogram",
    "surview",
    "localizer",
    "mip",
    "mpr",
    "reformat",
)


class SeriesRules(BaseModel):
    """What a series must look like to be used for TAVI planning (one set per site).

    Attributes
    ----------
    modality:
        Required Modality.
    require_image_type, reject_image_type:
        ImageType values that must all be present / must all be absent (case-insensitive).
    require_axial, axial_tolerance_deg:
        Require the slice normal within this angle of the patient z axis (either direction).
    max_slice_thickness_mm:
        Largest SliceThickness accepted (None: any). Without the tag, the median slice spacing counts.
    min_slices:
        Fewest slices (files) accepted.
    description_include, description_exclude:
        Patterns (see the module docstring): the description must match one include pattern (if any
        are given) and no exclude pattern.
    contrast, contrast_min_hu:
        ``"required"``: the blood-pool estimate must reach ``contrast_min_hu``; ``"any"``: no check.
    preferred_phase_percent, phase_tolerance_percent:
        The site's reconstruction phase and the accepted circular distance from it, percent R-R.
    prefer:
        Tie-breakers among accepted series after phase and kernel, in order: ``"thinnest"`` (smallest
        slice thickness) and ``"most_slices"``. Lowest series number, then UID, decide last.
    kernels_preferred:
        Kernel patterns in order of preference; ranked after phase, before ``prefer``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    modality: str = "CT"
    require_image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY")
    reject_image_type: tuple[str, ...] = ("LOCALIZER",)
    require_axial: bool = True
    axial_tolerance_deg: float = Field(default=15.0, gt=0.0, lt=90.0)
    max_slice_thickness_mm: float | None = Field(default=3.0, gt=0.0)
    min_slices: int = Field(default=16, ge=1)
    description_include: list[str] = []
    description_exclude: list[str] = list(DEFAULT_DESCRIPTION_EXCLUDE)
    contrast: Literal["required", "any"] = "required"
    contrast_min_hu: float = Field(default=180.0, gt=0.0)
    preferred_phase_percent: int | None = Field(default=None, ge=0, le=100)
    phase_tolerance_percent: int = Field(default=8, ge=0, le=50)
    prefer: list[Literal["thinnest", "most_slices"]] = ["thinnest"]
    kernels_preferred: list[str] = []

    @field_validator("description_include", "description_exclude", "kernels_preferred")
    @classmethod
    def _valid_patterns(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            if not p:
                raise ValueError("patterns must not be empty (an empty pattern matches everything)")
            try:
                re.compile(p, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {p!r}: {exc}") from exc
        return patterns

    @field_validator("prefer")
    @classmethod
    def _distinct(cls, prefer: list[Literal["thinnest", "most_slices"]]) -> list[Literal["thinnest", "most_slices"]]:
        if len(set(prefer)) != len(prefer):
            raise ValueError(f"prefer lists a tie-breaker twice: {prefer}")
        return prefer

    def for_site(self, site: SiteConfig) -> SeriesRules:
        """These rules with the site's ``preferred_phase_percent`` filled in where they name none."""
        if self.preferred_phase_percent is not None or site.preferred_phase_percent is None:
            return self
        return self.model_copy(update={"preferred_phase_percent": site.preferred_phase_percent})


class SeriesCandidate(BaseModel):
    """One series of a study as the selection saw it.

    ``phase`` is percent R-R (None: unknown); ``contrast_tag`` is True/False when ContrastBolusAgent
    names an agent / says none, None when absent; ``contrast_hu`` is the blood-pool estimate, None
    when the pixels were not read. ``reasons`` lists every rule the series failed (empty if accepted).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    uid: str
    description: str
    number: int | None
    modality: str = ""
    kernel: str = ""
    slices: int
    slice_thickness_mm: float | None
    image_type: list[str]
    phase: float | None
    contrast_tag: bool | None
    contrast_hu: float | None
    accepted: bool
    reasons: list[str]


class StudySelection(BaseModel):
    """The outcome for one study: the chosen series (or None and why) and every candidate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_uid: str
    chosen_series_uid: str | None
    candidates: list[SeriesCandidate]
    reason_if_none: str | None = None


class SelectionProblem(BaseModel):
    """A file that could not be used. ``file_key`` is a hash of its path (paths may name patients)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file_key: str
    problem: str


class SelectionReport(BaseModel):
    """Contents of the ``select-series`` report: one entry per study found, plus unusable files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    studies: list[StudySelection]
    problems: list[SelectionProblem] = []
    ignored_files: int = 0
    rules: SeriesRules | None = None

    def chosen(self) -> dict[str, str]:
        """Study UID → chosen series UID, for the studies where one was chosen."""
        return {s.study_uid: s.chosen_series_uid for s in self.studies if s.chosen_series_uid is not None}
