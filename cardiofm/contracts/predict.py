"""Typed parameters of the predict chain: stage a series, predict, measure, write the DICOM exports, send them.

The ``cardiofm-predict`` DAG runs these steps on every series of its batch, after the ``convert`` and
``crop-heart`` steps of preparation (the same code, so a CT is cropped for prediction exactly as for
training). ``cardiofm predict`` runs the same functions in one process. Stdlib + pydantic only.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from cardiofm.contracts.env import ImageProfile, StepParams
from cardiofm.contracts.pacs import PacsParams

_DIR = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Default lowest confidence of a placed landmark (below: listed as missing).
DEFAULT_MIN_CONFIDENCE = 0.3


class StageSeriesParams(StepParams, PacsParams):
    """``stage-series``: one batch folder per requested series, its DICOM files retrieved from the PACS.

    Attributes
    ----------
    series_uids:
        Series Instance UIDs to predict (a list field of the form; a JSON list in the environment).
    dicom_folder:
        Without a PACS (no ``dicomweb_url``, no ``dimse``): a folder of DICOM files to find the series in.
    """

    step: ClassVar[str] = "stage-series"
    batch: ClassVar[bool] = True
    series_uids: list[str] = Field(min_length=1)
    dicom_folder: str | None = None


class PredictParams(StepParams):
    """``predict``: the models on the heart crop; landmarks (LPS mm) and calcification on the series' own grid.

    Attributes
    ----------
    model:
        Model(s): a release folder or checkpoint file each, one per head (a student holds every head).
    native_dir:
        The batch folder's ``convert`` output: the series as NIfTI (the grid the outputs are written on).
    min_confidence:
        A landmark decoded below this confidence is reported as missing.
    device:
        ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    step: ClassVar[str] = "predict"
    image: ClassVar[ImageProfile] = "trainer"
    model: list[str] = Field(min_length=1)
    native_dir: str = Field(default="convert", pattern=_DIR)
    min_confidence: float = Field(default=DEFAULT_MIN_CONFIDENCE, ge=0.0, le=1.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class MeasureParams(StepParams):
    """``measure``: TAVI measurements from the predicted points, the CT and the calcification mask.

    Attributes
    ----------
    native_dir:
        The batch folder's ``convert`` output (the CT the lumen measurements read).
    non_contrast:
        The series is a non-contrast calcium-scoring scan (only then is an Agatston score given).
    """

    step: ClassVar[str] = "measure"
    image: ClassVar[ImageProfile] = "trainer"
    native_dir: str = Field(default="convert", pattern=_DIR)
    non_contrast: bool = False


class ExportDicomParams(StepParams):
    """``export-dicom``: a DICOM SEG of the calcification and a TID 1500 SR of points and measurements.

    Attributes
    ----------
    dicom_dir:
        The batch folder's folder holding the source series' DICOM files (the SEG and SR reference them).
    native_dir:
        The batch folder's ``convert`` output (the grid the mask lies on).
    """

    step: ClassVar[str] = "export-dicom"
    dicom_dir: str = Field(default="stage-series", pattern=_DIR)
    native_dir: str = Field(default="convert", pattern=_DIR)


class SendResultsParams(StepParams, PacsParams):
    """``send-results``: store the SEG and SR in the PACS (DICOMweb STOW-RS or DIMSE C-STORE)."""

    step: ClassVar[str] = "send-results"


#: The predict DAG's chain after ``convert`` and ``crop-heart``, in order.
PREDICT_STEPS: tuple[type[StepParams], ...] = (PredictParams, MeasureParams, ExportDicomParams, SendResultsParams)
