"""Schemas of a site dataset: ``manifest.json`` and each case's ``case.json`` (provenance).

Case ids are pseudonymous; Study/Series Instance UIDs are kept as site-local provenance and never
leave the site. No names, patient ids or dates appear in either file.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StepRecord(BaseModel):
    """One step's mark on a case."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: str
    version: str
    params_sha256: str
    seconds: float
    outputs: list[str] = []
    notes: list[str] = []


class CaseRecord(BaseModel):
    """Contents of ``cases/<case-id>/case.json``."""

    model_config = ConfigDict(frozen=False, extra="forbid")

    case_id: str
    steps: list[StepRecord] = []
    label_problems: list[str] = []


class SourceRef(BaseModel):
    """Site-local provenance of a case."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_uid: str
    series_uid: str


class ManifestCase(BaseModel):
    """One case of the dataset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    case_id: str
    split: Literal["train", "test"]
    #: Tasks this case holds complete labels for.
    tasks: list[str]
    #: Canonical landmark names present in ``labels/landmarks.json``.
    landmarks: list[str]
    source: SourceRef
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]


class DatasetManifest(BaseModel):
    """Contents of ``manifest.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = 1
    site_id: str
    created_with: str
    split_seed: int
    test_fraction: float = Field(ge=0.0, le=0.9)
    cases: list[ManifestCase]

    def case(self, case_id: str) -> ManifestCase:
        """The case with this id (KeyError if absent)."""
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise KeyError(case_id)
