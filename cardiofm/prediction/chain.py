"""The predict chain over one series, as plain functions: the steps of ``cardiofm-predict`` and ``cardiofm predict``.

Only the predict step needs torch; this module imports it only there (the DICOM steps run in the light image).
Folders follow the step contract: each step reads its input folder (and, by name, the folders of earlier
steps in the same batch folder) and writes only its output folder.

- predict: ``landmarks.json``, ``calcification.nii.gz`` (on the series' grid), ``landmarks.mps``,
  ``landmarks.mrk.json``, ``landmarks.csv``;
- measure: ``measurements.json`` and ``report.png``, with the predict files carried along;
- export-dicom: ``seg.dcm`` (when a calcification head ran) and ``sr.dcm``;
- send-results: both into the PACS.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cardiofm.contracts.measurements import MeasurementReport, PredictedLandmarks
from cardiofm.contracts.predict import ExportDicomParams, MeasureParams, PredictParams, SendResultsParams
from cardiofm.errors import InputDataError
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.nifti import load_nifti, read_grid, save_nifti

if TYPE_CHECKING:
    from cardiofm.prediction.infer import LoadedModel, NativePrediction

logger = logging.getLogger(__name__)

LANDMARKS_FILE = "landmarks.json"
CALCIFICATION_FILE = "calcification.nii.gz"
MEASUREMENTS_FILE = "measurements.json"
REPORT_FILE = "report.png"
SEG_FILE = "seg.dcm"
SR_FILE = "sr.dcm"
VIEWER_FILES = ("landmarks.mps", "landmarks.mrk.json", "landmarks.csv")
#: Every file a prediction writes: a new prediction into the same folder replaces them all (no stale mask or SR
#: of an earlier model is left beside the new points).
OUTPUT_FILES = (LANDMARKS_FILE, CALCIFICATION_FILE, MEASUREMENTS_FILE, REPORT_FILE, SEG_FILE, SR_FILE, *VIEWER_FILES)
#: Half size of the region of the CT the report shows around the annulus, mm.
REPORT_HALF_MM = 45.0

_MODELS: dict[tuple[str, ...], list[LoadedModel]] = {}


def models_for(paths: Sequence[str]) -> list[LoadedModel]:
    """The models at ``paths``, loaded once per process (a step predicts a whole batch with them)."""
    from cardiofm.prediction.infer import load_models

    key = tuple(paths)
    if key not in _MODELS:
        _MODELS[key] = load_models([Path(p) for p in paths])
    return _MODELS[key]


def native_image(folder: Path) -> Path:
    """The series' NIfTI in a convert step's output folder (or a folder the CLI filled the same way)."""
    for name in ("image.nii", "image.nii.gz"):
        if (folder / name).is_file():
            return folder / name
    raise InputDataError(f"no converted image (image.nii or image.nii.gz) in {folder.name}; run convert first")


def write_prediction(out_dir: Path, pred: NativePrediction) -> list[Path]:
    """Write ``landmarks.json``, the calcification mask and the viewer files (MITK, 3D Slicer, CSV)."""
    from cardiofm.exports.viewers import write_viewer_files

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / LANDMARKS_FILE]
    written[0].write_text(pred.landmarks.model_dump_json(indent=2) + "\n", encoding="utf-8")
    if pred.calcification is not None:
        written.append(save_nifti(out_dir / CALCIFICATION_FILE, pred.calcification, pred.native_grid))
    written += write_viewer_files(out_dir, pred.landmarks, pred.native_grid)
    return written


def predict_case(in_dir: Path, out_dir: Path, params: PredictParams) -> list[str]:
    """The predict step on one batch folder: ``in_dir`` is the crop-heart output."""
    from cardiofm.prediction.infer import predict_native

    native = native_image(in_dir.parent / params.native_dir)
    pred = predict_native(
        models_for(params.model),
        in_dir,
        read_grid(native),
        device=params.device,
        min_confidence=params.min_confidence,
    )
    write_prediction(out_dir, pred)
    lm = pred.landmarks
    notes = [f"{len(lm.points)} landmark(s) placed" + (f", missing: {', '.join(lm.missing)}" if lm.missing else "")]
    if pred.calcification is not None:
        voxel_mm3 = float(np.prod(pred.native_grid.spacing_mm))
        notes.append(f"calcification {float(pred.calcification.sum()) * voxel_mm3:.0f} mm³")
    return notes


def read_predicted_landmarks(folder: Path) -> PredictedLandmarks:
    """``landmarks.json`` of a predict output folder."""
    path = folder / LANDMARKS_FILE
    if not path.is_file():
        raise InputDataError(f"no {LANDMARKS_FILE} in {folder.name}; run predict first")
    return PredictedLandmarks.model_validate_json(path.read_text(encoding="utf-8"))


def read_calcification(folder: Path, grid: Grid) -> npt.NDArray[np.uint8] | None:
    """The predicted calcification mask of ``folder`` (on ``grid``), or None when no model predicted one."""
    path = folder / CALCIFICATION_FILE
    if not path.is_file():
        return None
    data, mask_grid = load_nifti(path)
    if mask_grid.shape != grid.shape:
        raise InputDataError(f"{CALCIFICATION_FILE} is not on the series' grid; run predict again")
    return (np.asarray(data) > 0).astype(np.uint8)


def subvolume(
    hu: npt.NDArray[np.float32], grid: Grid, centre_mm: npt.ArrayLike, half_mm: float
) -> tuple[npt.NDArray[np.float32], Grid]:
    """The part of ``hu`` within ``half_mm`` of ``centre_mm`` (a box of whole voxels), and its grid."""
    c = grid.lps_to_index(np.asarray(centre_mm, dtype=float))
    r = half_mm / np.asarray(grid.spacing_mm)
    lo = np.clip(np.floor(c - r).astype(int), 0, np.asarray(grid.shape) - 1)
    hi = np.clip(np.ceil(c + r).astype(int) + 1, lo + 1, np.asarray(grid.shape))
    return hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], grid.sub_grid(lo, hi)


def measure_and_report(
    out_dir: Path,
    landmarks: PredictedLandmarks,
    hu: npt.NDArray[np.float32],
    grid: Grid,
    calcification: npt.NDArray[np.uint8] | None,
    *,
    non_contrast: bool = False,
) -> MeasurementReport:
    """Write ``measurements.json`` and ``report.png`` for one CT (on its native grid)."""
    from cardiofm.measurements.report import measure_all
    from cardiofm.prediction.report_png import render_report_png

    mask = (calcification, grid) if calcification is not None else None
    report = measure_all(landmarks.points, (hu, grid), mask, non_contrast=non_contrast)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MEASUREMENTS_FILE).write_text(report.model_dump_json(by_alias=True, indent=2) + "\n", encoding="utf-8")
    plane = report.annular_plane
    if plane is not None:
        centre = np.asarray(plane.centre_mm)
    elif landmarks.points:
        centre = np.mean([np.asarray(p) for p in landmarks.points.values()], axis=0)
    else:
        centre = grid.index_to_lps((np.asarray(grid.shape) - 1) / 2.0)
    sub_hu, sub_grid = subvolume(hu, grid, centre, REPORT_HALF_MM)
    render_report_png(out_dir / REPORT_FILE, sub_hu, sub_grid, landmarks.points, calcification, grid, plane)
    return report


def measure_case(in_dir: Path, out_dir: Path, params: MeasureParams) -> list[str]:
    """The measure step on one batch folder: ``in_dir`` is the predict output; predict's files are carried."""
    native = native_image(in_dir.parent / params.native_dir)
    data, grid = load_nifti(native, float32=True)
    landmarks = read_predicted_landmarks(in_dir)
    calcification = read_calcification(in_dir, grid)
    report = measure_and_report(
        out_dir, landmarks, np.asarray(data, dtype=np.float32), grid, calcification, non_contrast=params.non_contrast
    )
    for path in in_dir.iterdir():
        if path.is_file() and not (out_dir / path.name).exists():
            shutil.copyfile(path, out_dir / path.name)
    n_ok = sum(1 for m in report.measurements if m.available)
    return [f"{n_ok} of {len(report.measurements)} measurements available"]


def read_measurements(folder: Path) -> MeasurementReport:
    """``measurements.json`` of a measure output folder."""
    path = folder / MEASUREMENTS_FILE
    if not path.is_file():
        raise InputDataError(f"no {MEASUREMENTS_FILE} in {folder.name}; run measure first")
    return MeasurementReport.model_validate_json(path.read_text(encoding="utf-8"))


def write_dicom_exports(
    out_dir: Path,
    landmarks: PredictedLandmarks,
    report: MeasurementReport,
    calcification: npt.NDArray[np.uint8] | None,
    grid: Grid,
    dicom_files: Sequence[Path],
) -> list[Path]:
    """``seg.dcm`` (the calcification, when a model predicted it) and ``sr.dcm`` (points and measurements)."""
    import pydicom

    from cardiofm.exports.seg import write_seg
    from cardiofm.exports.sr import write_sr

    if landmarks.model is None:
        raise InputDataError(f"{LANDMARKS_FILE} names no model; run predict again")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_files]
    written: list[Path] = []
    seg = None
    if calcification is not None:
        seg = write_seg(out_dir / SEG_FILE, calcification, grid, sources, model=landmarks.model)
        written.append(out_dir / SEG_FILE)
    write_sr(out_dir / SR_FILE, landmarks, report, sources, seg, model=landmarks.model)
    written.append(out_dir / SR_FILE)
    return written


def export_dicom_case(in_dir: Path, out_dir: Path, params: ExportDicomParams) -> list[str]:
    """The export-dicom step on one batch folder: ``in_dir`` is the measure output."""
    case_dir = in_dir.parent
    grid = read_grid(native_image(case_dir / params.native_dir))
    files = sorted((case_dir / params.dicom_dir / "series").glob("*.dcm"))
    if not files:
        raise InputDataError(f"no DICOM series in {params.dicom_dir}/series: the SEG and SR must reference it")
    written = write_dicom_exports(
        out_dir,
        read_predicted_landmarks(in_dir),
        read_measurements(in_dir),
        read_calcification(in_dir, grid),
        grid,
        files,
    )
    return [", ".join(p.name for p in written)]


def send_results_case(in_dir: Path, out_dir: Path, params: SendResultsParams) -> list[str]:
    """The send-results step on one batch folder: store the export-dicom files (``in_dir``) in the PACS."""
    import os

    from cardiofm.exports.send import send_files

    files = sorted(in_dir.glob("*.dcm"))
    if not files:
        raise InputDataError("no SEG or SR to send in the export-dicom output; run export-dicom first")
    sent = send_files(files, params, os.environ)
    (out_dir / "sent.json").write_text(
        json.dumps({"files": [p.name for p in files], "instances": sent.n_instances, "pacs": sent.where}, indent=2)
    )
    return [f"stored {sent.n_instances} instance(s) at {sent.where}"]
