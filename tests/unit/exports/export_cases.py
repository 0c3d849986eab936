"""Test helpers of the export tests: a tiny synthetic CT series with a burnt-in "calcium" mask, converted by dcm2niix.

The mask is drawn on the DICOM grid (``mask_dicom[i, j, k]``: column i, row j of instance k) and burnt into
the CT as 1000 HU, so each instance's own pixels say where the calcium is; the mask the exports get is the
one read back from dcm2niix's NIfTI (``ct > 500``), on the NIfTI's grid, whose axes differ from instance order
for the feet-first and reversed-slice series.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from cardiofm.contracts.measurements import ModelInfo
from cardiofm.dicom.convert import convert_series
from cardiofm.imaging.geometry import Grid, as_direction
from cardiofm.imaging.nifti import load_nifti
from cardiofm.phantoms.dicom_writer import PatientInfo, SeriesInfo, StudyInfo, write_ct_series

PATIENT = PatientInfo(patient_id="S01-P0042", patient_name="SITE01^PATIENT0042", sex="M", age_years=81)
STUDY = StudyInfo(
    study_uid="1.2.826.0.1.3680043.8.498.300",
    study_id="42",
    accession_number="ACC0042",
    description="CTA heart (synthetic)",
    date="20240305",
    time="101500",
    institution_name="Synthetic Site 01",
)
SERIES = SeriesInfo(
    series_uid="1.2.826.0.1.3680043.8.498.301",
    frame_of_reference_uid="1.2.826.0.1.3680043.8.498.302",
    series_number=4,
    description="CTA 70%",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    slice_thickness_mm=1.25,
    convolution_kernel="Bv36",
    contrast_agent=None,
    cardiac_phase_percent=70.0,
    kvp=100.0,
    manufacturer="CardioFM Synthetic",
    manufacturer_model="Phantom CT 1",
)
MODEL = ModelInfo(name="cardiofm-student", version="1.2.0", sha256="0123456789abcdef" * 4)
SHAPE = (12, 10, 7)
SPACING_MM = (0.7, 0.8, 1.25)
#: Direction matrices (columns = i, j, k axes in LPS) of the DICOM grid, by case.
ORIENTATIONS = {
    "hfs": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "ffs": ((-1, 0, 0), (0, 1, 0), (0, 0, -1)),
    "reversed_slices": ((1, 0, 0), (0, 1, 0), (0, 0, -1)),
}
CALCIUM_HU = 1000.0


@dataclass(frozen=True)
class CtCase:
    """A written series, its datasets (shuffled), the DICOM-grid mask and dcm2niix's NIfTI mask and grid."""

    files: list[Path]
    datasets: list[Dataset]
    dicom_grid: Grid
    mask_dicom: npt.NDArray[np.uint8]
    mask_nifti: npt.NDArray[np.uint8]
    nifti_grid: Grid
    orientation: str


def dicom_grid(orientation: str) -> Grid:
    """The grid the series is written on."""
    direction = as_direction(np.column_stack(ORIENTATIONS[orientation]).astype(np.float64))
    return Grid(shape=SHAPE, spacing_mm=SPACING_MM, origin_lps_mm=(-4.0, 12.5, 30.0), direction=direction)


def calcium_mask() -> npt.NDArray[np.uint8]:
    """An asymmetric mask on the DICOM grid (so any flip or axis swap changes it)."""
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2:5, 3:4, 1] = 1
    mask[7, 1:6, 4] = 1
    mask[10, 8, 6] = 1
    return mask


def build_case(root: Path, orientation: str) -> CtCase:
    """Write, convert and read back a :class:`CtCase` for an orientation of :data:`ORIENTATIONS` under ``root``."""
    grid = dicom_grid(orientation)
    mask = calcium_mask()
    volume = np.where(mask > 0, CALCIUM_HU, -100.0)
    files = write_ct_series(volume, grid, PATIENT, STUDY, SERIES, root / "dicom")
    result = convert_series(files, root / "nifti")
    ct, nifti_grid = load_nifti(result.nifti_path)
    datasets: list[Dataset] = [pydicom.dcmread(f) for f in files]
    random.Random(7).shuffle(datasets)  # the exports must not rely on instance order
    return CtCase(
        files=files,
        datasets=datasets,
        dicom_grid=grid,
        mask_dicom=mask,
        mask_nifti=(np.asarray(ct) > CALCIUM_HU / 2).astype(np.uint8),
        nifti_grid=nifti_grid,
        orientation=result.orientation,
    )
