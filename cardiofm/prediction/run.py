"""``cardiofm predict`` in one process: the steps of the predict DAG, one after the other, for one CT.

The same functions as the DAG's steps, with one output folder: every file a clinician or viewer needs,
side by side. Intermediates (the converted series, the heart crop) stay in a work folder that is removed
at the end unless it is kept for inspection.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cardiofm.contracts.measurements import MeasurementReport
from cardiofm.contracts.pacs import PacsParams
from cardiofm.contracts.predict import DEFAULT_MIN_CONFIDENCE
from cardiofm.contracts.steps import CropHeartParams
from cardiofm.errors import ConfigError
from cardiofm.imaging.nifti import load_nifti
from cardiofm.prediction.chain import (
    OUTPUT_FILES,
    measure_and_report,
    models_for,
    write_dicom_exports,
    write_prediction,
)
from cardiofm.prediction.infer import NativePrediction, predict_native
from cardiofm.prediction.inputs import CtInput, resolve_input

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictRequest:
    """Everything ``cardiofm predict`` was asked to do."""

    models: tuple[str, ...]
    out_dir: Path
    input_path: Path | None = None
    series_uid: str | None = None
    study_uid: str | None = None
    pacs: PacsParams = field(default_factory=PacsParams)
    crop: CropHeartParams = field(default_factory=CropHeartParams)
    device: str = "auto"
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    non_contrast: bool = False
    send: bool = False
    keep_work: bool = False


@dataclass
class PredictOutcome:
    """What a prediction produced, and how long each stage took (seconds)."""

    prediction: NativePrediction
    measurements: MeasurementReport
    files: list[Path]
    seconds: dict[str, float]


def _stage(seconds: dict[str, float], name: str, start: float) -> float:
    now = time.perf_counter()
    seconds[name] = round(now - start, 3)
    return now


def _crop(ct: CtInput, work: Path, params: CropHeartParams) -> Path:
    """The heart crop of the series, exactly as preparation's crop-heart step makes it."""
    from cardiofm.pipeline.case_steps import crop_case

    native_dir = work / "native"
    native_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if ct.nifti.name.endswith(".nii.gz") else ".nii"
    target = native_dir / f"image{suffix}"
    if ct.nifti.resolve() != target.resolve():
        os.symlink(ct.nifti.resolve(), target)
    crop_dir = work / "crop"
    crop_dir.mkdir()
    crop_case(native_dir, crop_dir, params)
    return crop_dir


def predict_ct(request: PredictRequest) -> PredictOutcome:
    """Predict one CT and write every output into ``request.out_dir``.

    Raises
    ------
    ConfigError
        Contradictory options (e.g. both --input and --pacs-series).
    InputDataError
        The input is not a usable CT (naming what was wrong).
    MissingResourceError
        Model or segmenter weights are missing.
    """
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    models = models_for(request.models)
    t = _stage(seconds, "load_models", t)
    request.out_dir.mkdir(parents=True, exist_ok=True)
    stale = [request.out_dir / name for name in OUTPUT_FILES if (request.out_dir / name).exists()]
    if stale:
        logger.warning("replacing the earlier prediction in %s (%d files)", request.out_dir.name, len(stale))
        for path in stale:
            path.unlink()
    work = Path(tempfile.mkdtemp(prefix="cardiofm-predict-", dir=request.out_dir))
    try:
        ct = resolve_input(
            request.input_path, work, pacs=request.pacs, series_uid=request.series_uid, study_uid=request.study_uid
        )
        if request.send and not ct.dicom_files:
            raise ConfigError(
                "--send stores the DICOM SEG and SR, which need a DICOM input: give a series, not a NIfTI"
            )
        t = _stage(seconds, "input_and_convert", t)
        crop_params = request.crop.model_copy(
            update={"margin_mm": models[0].checkpoint.train_config.preprocessing.crop_margin_mm}
        )
        crop_dir = _crop(ct, work, crop_params)
        t = _stage(seconds, "heart_crop", t)
        data, grid = load_nifti(ct.nifti, float32=True)
        hu = np.asarray(data, dtype=np.float32)
        pred = predict_native(models, crop_dir, grid, device=request.device, min_confidence=request.min_confidence)
        t = _stage(seconds, "predict", t)
        files = write_prediction(request.out_dir, pred)
        report = measure_and_report(
            request.out_dir, pred.landmarks, hu, grid, pred.calcification, non_contrast=request.non_contrast
        )
        t = _stage(seconds, "measure_and_report", t)
        if ct.dicom_files:
            files += write_dicom_exports(
                request.out_dir, pred.landmarks, report, pred.calcification, grid, ct.dicom_files
            )
            t = _stage(seconds, "dicom_exports", t)
        if request.send:
            from cardiofm.exports.send import send_files

            sent = send_files([p for p in files if p.suffix == ".dcm"], request.pacs, os.environ)
            logger.info("stored %d instance(s) at %s", sent.n_instances, sent.where)
            t = _stage(seconds, "send", t)
    finally:
        if request.keep_work:
            logger.warning("work folder kept: %s", work.name)
        else:
            shutil.rmtree(work, ignore_errors=True)
    seconds.update({f"model_{k}": round(v, 3) for k, v in pred.seconds.items()})
    return PredictOutcome(prediction=pred, measurements=report, files=files, seconds=seconds)
