"""Schema of a synthetic federation's ``federation.json``: the evaluation-only truth about every site.

No pipeline step may read this file; tests and evaluation use it to check what the pipeline found.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from cardiofm.constants import TASKS


class SeriesRecord(BaseModel):
    """One series of a study, as generated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    series_uid: str
    kind: str
    description: str
    slices: int


class StudyRecord(BaseModel):
    """One study (one patient) of a site."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    case_id: str
    patient_id: str
    study_uid: str
    correct_series_uid: str | None
    tasks_labelled: list[str]
    calcium_burden: str
    series: list[SeriesRecord]


class SiteRecord(BaseModel):
    """One synthetic hospital."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    site_id: str
    folder: str
    held_out: bool
    tasks: list[str]
    scanner_profile: dict[str, object]
    annotation_format: str | None
    studies: list[StudyRecord]


class FederationRecord(BaseModel):
    """Contents of ``federation.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = 1
    seed: int
    size: dict[str, int | str]
    series_per_study: int
    tasks: list[str] = list(TASKS)
    sites: list[SiteRecord]
