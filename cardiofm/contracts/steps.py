"""Typed parameters of every step a DAG runs, shared by the Airflow operator and the container.

Each model is a :class:`~cardiofm.contracts.env.StepParams`: the operator writes it into the task's
environment, ``cardiofm step <name>`` reads it back. :data:`STEPS` is the registry both sides use.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from cardiofm.contracts.coordinator import SiteJoinParams, SitePseudolabelParams
from cardiofm.contracts.env import ImageProfile, StepParams
from cardiofm.contracts.pacs import PacsParams
from cardiofm.contracts.predict import PREDICT_STEPS, StageSeriesParams
from cardiofm.contracts.selection import SeriesRules

__all__ = ["STEPS", "ImageProfile", "StepParams"]


class StageStudiesParams(StepParams, PacsParams):
    """``stage-studies``: one case folder per study, from the site's PACS folder, DICOMweb or DIMSE."""

    step: ClassVar[str] = "stage-studies"
    #: The site's ``site.yaml`` (its site id names the cases; ``pacs.path`` is the local PACS folder).
    site_config: str
    #: Folder ``pacs.path`` is relative to; None: the folder of ``site_config``.
    site_dir: str | None = None


class SelectSeriesParams(StepParams):
    """``select-series``: choose the TAVI-planning series of each study."""

    step: ClassVar[str] = "select-series"
    #: The site's ``site.yaml`` (its preferred cardiac phase fills in ``rules``); optional.
    site_config: str | None = None
    rules: SeriesRules = SeriesRules()
    #: The site's secret for hashing annotation match keys; None: ``.cardiofm/match.key`` beside ``site_config``.
    match_key_file: str | None = None


class ConvertParams(StepParams):
    """``convert``: DICOM series → NIfTI with geometry validation."""

    step: ClassVar[str] = "convert"
    name: str = Field(default="image", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    timeout_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    #: gzip the full-resolution image. Off by default: it is a work-folder intermediate that crop-heart
    #: reads at once, and gzip is most of the conversion time (about 2.6 of 3 s at 512²×300).
    compress: bool = False


class CropHeartParams(StepParams):
    """``crop-heart``: segment the heart, crop with a margin and resample to isotropic spacing."""

    step: ClassVar[str] = "crop-heart"
    image: ClassVar[ImageProfile] = "segmenter"
    segmenter: Literal["fallback", "totalsegmentator"] = "fallback"
    margin_mm: float = Field(default=20.0, ge=0.0, le=100.0)
    spacing_mm: float = Field(default=1.0, gt=0.2, le=5.0)
    #: Interpreter of the segmenter environment (TotalSegmentator); None: this interpreter.
    segmenter_python: str | None = None
    #: Where TotalSegmentator runs; ``auto``: the GPU when CUDA works in the segmenter environment.
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    timeout_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)


class ImportLabelsParams(StepParams):
    """``import-labels``: site annotations → canonical landmarks and masks on the crop grid."""

    step: ClassVar[str] = "import-labels"
    #: The site's ``site.yaml``; annotation paths in it are relative to ``site_dir``.
    site_config: str
    #: Folder the annotation paths are relative to; None: the folder of ``site_config``.
    site_dir: str | None = None
    #: The site's secret for hashing annotation match keys (as select-series); None: beside ``site_config``.
    match_key_file: str | None = None


class BuildDatasetParams(StepParams):
    """``build-dataset``: collect prepared cases into a site dataset with a frozen split."""

    step: ClassVar[str] = "build-dataset"
    dataset_dir: str
    #: The site's id in the manifest; None: the ``site_id`` of ``site_config``.
    site_id: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    site_config: str | None = None
    test_fraction: float = Field(default=0.2, ge=0.0, le=0.9)
    split_seed: int = 0


class PrepareReportParams(StepParams):
    """``prepare-report``: the site's reports from every step's summary; the DICOM links removed."""

    step: ClassVar[str] = "prepare-report"
    #: The dataset folder (as build-dataset's ``dataset_dir``): the reports are written beside its manifest.
    dataset_dir: str
    #: Output folders of the chain's steps, in order (their ``summary.json`` files are read).
    steps: list[str] = Field(default_factory=lambda: [p.step for p in PREPARE_CHAIN if p is not PrepareReportParams])
    stage_dir: str = "stage-studies"
    select_dir: str = "select-series"


class TrainLocalParams(StepParams):
    """``train-local``: a local-only teacher for one task on this site's data alone, for comparison.

    It is the federated teacher's model with the federated teacher's settings (``run_config``: the same
    kebab-case keys as ``cardiofm coordinator run --run-config``), trained without any federation.
    """

    step: ClassVar[str] = "train-local"
    image: ClassVar[ImageProfile] = "trainer"
    batch: ClassVar[bool] = False

    dataset: Path
    #: The checkpoint file to write.
    out: Path
    task: Literal["landmarks", "septum", "calcification"]
    steps: int = Field(default=200, ge=1)
    run_config: dict[str, str | int | float | bool] = Field(default_factory=dict)


#: The preparation chain, in order; each step's output folder is named after it.
PREPARE_CHAIN: tuple[type[StepParams], ...] = (
    StageStudiesParams,
    SelectSeriesParams,
    ConvertParams,
    CropHeartParams,
    ImportLabelsParams,
    BuildDatasetParams,
    PrepareReportParams,
)

#: Every step ``cardiofm step <name>`` runs, by name.
_ALL: tuple[type[StepParams], ...] = (
    *PREPARE_CHAIN,
    SitePseudolabelParams,
    SiteJoinParams,
    TrainLocalParams,
    StageSeriesParams,
    *PREDICT_STEPS,
)
STEPS: dict[str, type[StepParams]] = {p.step: p for p in _ALL}
