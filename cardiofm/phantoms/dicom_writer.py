"""Write synthetic CT volumes (phantoms) as valid CT Image Storage DICOM series.

The writer is the inverse of reading a series with dcm2niix: a volume indexed ``[i, j, k]`` on a
:class:`~cardiofm.imaging.geometry.Grid` becomes one single-frame file per ``k``, whose pixel rows run
along ``j`` and columns along ``i``. All identifiers are pseudonyms; no birth date is ever written.

Speed: one template :class:`~pydicom.dataset.Dataset` is built per series and only the per-slice
elements (UIDs, position, pixel data) are replaced before each write, so a 512 x 512 x 300 series takes
well under a few seconds.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from cardiofm.constants import CT_IMAGE_STORAGE_UID
from cardiofm.errors import InputDataError
from cardiofm.imaging.geometry import Grid

logger = logging.getLogger(__name__)

#: Largest stored value of an unsigned 16-bit pixel.
_UINT16_MAX = 65535
#: Largest stored value that fits in 12 bits.
_UINT12_MAX = 4095
#: RR interval used to turn a cardiac phase percentage into a trigger time (60 bpm), ms.
_RR_INTERVAL_MS = 1000.0
#: Voxels converted per block in :func:`_to_stored_slices` (keeps float temporaries at ~16 MB).
_BLOCK_VOXELS = 2_000_000
#: Magnitudes below this are written as 0 in decimal strings (avoids ``6.1e-17`` in orientations).
_DS_ZERO = 1e-12
#: Tolerance on a direction component's sign when deriving PatientPosition.
_AXIS_TOL = 1e-6
#: PatientPosition by (i axis has x >= 0, j axis has y >= 0).
_POSITIONS = {(True, True): "HFS", (False, True): "FFS", (False, False): "HFP", (True, False): "FFP"}
#: PatientAge holds three digits.
_MAX_AGE_YEARS = 999
_DATE_RE = re.compile(r"^\d{8}$")
_TIME_RE = re.compile(r"^\d{6}$")


@dataclass(frozen=True)
class PatientInfo:
    """Pseudonymous patient identity (never real data).

    Attributes
    ----------
    patient_id, patient_name:
        Pseudonymous id and DICOM person name, e.g. ``"S01-P0007"``, ``"SITE01^PATIENT0007"``.
    sex:
        ``"M"``, ``"F"`` or ``"O"``.
    age_years:
        Age in years, written as PatientAge (``"077Y"``); no birth date is written.
    """

    patient_id: str
    patient_name: str
    sex: str
    age_years: int


@dataclass(frozen=True)
class StudyInfo:
    """One synthetic study.

    Attributes
    ----------
    study_uid, study_id, accession_number, description:
        Study identifiers and StudyDescription.
    date, time:
        Synthetic ``"YYYYMMDD"`` and ``"HHMMSS"``; also used for the series, acquisition and content.
    institution_name:
        Synthetic site name.
    """

    study_uid: str
    study_id: str
    accession_number: str
    description: str
    date: str
    time: str
    institution_name: str


@dataclass(frozen=True)
class SeriesInfo:
    """One synthetic CT series.

    Attributes
    ----------
    series_uid, frame_of_reference_uid, series_number, description:
        Series identity and SeriesDescription.
    image_type:
        ImageType values, e.g. ``("ORIGINAL", "PRIMARY", "AXIAL")`` or ``(..., "LOCALIZER")``.
    slice_thickness_mm, convolution_kernel:
        Nominal slice thickness (mm) and reconstruction kernel name (e.g. ``"Bv36"``).
    contrast_agent:
        ContrastBolusAgent; ``None`` leaves the element out.
    cardiac_phase_percent:
        Cardiac phase in percent of the RR interval; when given it is written as
        NominalPercentageOfCardiacPhase and as TriggerTime (ms, at 60 bpm).
    kvp, manufacturer, manufacturer_model, body_part:
        Tube peak voltage (kV), synthetic equipment names and BodyPartExamined.
    uid_seed:
        Extra entropy for the SOPInstanceUIDs; empty means they depend on ``series_uid`` and the
        slice index only.
    """

    series_uid: str
    frame_of_reference_uid: str
    series_number: int
    description: str
    image_type: tuple[str, ...]
    slice_thickness_mm: float
    convolution_kernel: str
    contrast_agent: str | None
    cardiac_phase_percent: float | None
    kvp: float
    manufacturer: str
    manufacturer_model: str
    body_part: str = "HEART"
    uid_seed: str = ""


def _ds(value: float) -> str:
    """Format a number as a DICOM decimal string (at most 16 characters, full available precision)."""
    v = 0.0 if abs(value) < _DS_ZERO else float(value)
    return format_number_as_ds(v)


def patient_position(grid: Grid) -> str:
    """Derive PatientPosition from the in-plane axes of a grid.

    Parameters
    ----------
    grid:
        Grid whose i axis is the image row direction and j axis the column direction (LPS).

    Returns
    -------
    str
        ``"HFS"`` (i ≈ +x, j ≈ +y), ``"FFS"`` (i ≈ -x, j ≈ +y), ``"HFP"`` (i ≈ -x, j ≈ -y) or
        ``"FFP"`` (i ≈ +x, j ≈ -y). A zero x (or y) component counts as positive, so non-axial
        planes such as a coronal localizer map to the head-first supine family.
    """
    d = grid.direction_matrix
    return _POSITIONS[(bool(d[0, 0] >= -_AXIS_TOL), bool(d[1, 1] >= -_AXIS_TOL))]


def _check_inputs(
    volume_hu: npt.NDArray[np.generic], grid: Grid, patient: PatientInfo, study: StudyInfo, intercept: float
) -> None:
    """Raise :class:`InputDataError` for inputs that cannot be written."""
    if volume_hu.shape != grid.shape:
        raise InputDataError(
            f"volume shape {tuple(volume_hu.shape)} does not match grid shape {tuple(grid.shape)}; "
            "the volume must be indexed [i, j, k] like its grid"
        )
    if not (np.issubdtype(volume_hu.dtype, np.integer) or np.issubdtype(volume_hu.dtype, np.floating)):
        raise InputDataError(f"volume dtype {volume_hu.dtype} is not an integer or floating-point type")
    if np.issubdtype(volume_hu.dtype, np.floating) and not bool(np.isfinite(volume_hu).all()):
        raise InputDataError("volume contains NaN or infinite values; replace them before writing DICOM")
    if not np.isfinite(intercept):
        raise InputDataError(f"rescale_intercept must be finite, got {intercept}")
    if patient.sex not in ("M", "F", "O"):
        raise InputDataError(f"patient sex must be 'M', 'F' or 'O', got {patient.sex!r}")
    if not 0 <= patient.age_years <= _MAX_AGE_YEARS:
        raise InputDataError(f"patient age must be 0..999 years, got {patient.age_years}")
    if not _DATE_RE.match(study.date) or not _TIME_RE.match(study.time):
        raise InputDataError(f"study date/time must be 'YYYYMMDD'/'HHMMSS', got {study.date!r}/{study.time!r}")


def _to_stored_slices(
    volume_hu: npt.NDArray[np.generic], rescale_intercept: float
) -> tuple[npt.NDArray[np.uint16], bool]:
    """Convert HU ``[i, j, k]`` to stored unsigned 16-bit slices ``[k, j, i]`` (C-contiguous).

    Values are rounded to nearest and clipped to 0..65535. Work proceeds in blocks along i so the
    float temporaries stay small and the transposition is fused with the conversion.

    Returns
    -------
    tuple
        The stored slices and whether any value had to be clipped.
    """
    ni, nj, nk = volume_hu.shape
    out = np.empty((nk, nj, ni), dtype=np.uint16)
    step = max(1, _BLOCK_VOXELS // (nj * nk))
    clipped = False
    for i0 in range(0, ni, step):
        block = volume_hu[i0 : i0 + step].astype(np.float64)
        block -= rescale_intercept
        np.rint(block, out=block)
        clipped = clipped or float(block.min()) < 0 or float(block.max()) > _UINT16_MAX
        np.clip(block, 0, _UINT16_MAX, out=block)
        out[:, :, i0 : i0 + step] = block.transpose(2, 1, 0)
    return out, clipped


def _template(
    grid: Grid, patient: PatientInfo, study: StudyInfo, series: SeriesInfo, *, bits_stored: int, intercept: float
) -> Dataset:
    """Build the dataset shared by every slice of a series (per-slice elements are filled in later)."""
    d = grid.direction_matrix
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = list(series.image_type)
    ds.SOPClassUID = CT_IMAGE_STORAGE_UID
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study.time
    ds.AccessionNumber = study.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = series.manufacturer
    ds.InstitutionName = study.institution_name
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = series.manufacturer_model
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = ""  # type 2: present but empty; no birth date is ever written
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age_years:03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom"
    if series.contrast_agent is not None:
        ds.ContrastBolusAgent = series.contrast_agent
    ds.BodyPartExamined = series.body_part
    ds.SliceThickness = _ds(series.slice_thickness_mm)
    ds.KVP = _ds(series.kvp)
    if series.cardiac_phase_percent is not None:
        ds.TriggerTime = _ds(series.cardiac_phase_percent / 100.0 * _RR_INTERVAL_MS)
    ds.ConvolutionKernel = series.convolution_kernel
    ds.PatientPosition = patient_position(grid)
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_ds(v) for v in (*d[:, 0], *d[:, 1])]
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    if series.cardiac_phase_percent is not None:
        ds.NominalPercentageOfCardiacPhase = float(series.cardiac_phase_percent)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = grid.shape[1]
    ds.Columns = grid.shape[0]
    ds.PixelSpacing = [_ds(grid.spacing_mm[1]), _ds(grid.spacing_mm[0])]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.LossyImageCompression = "00"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE_UID)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def sop_instance_uid(series: SeriesInfo, k: int) -> str:
    """Deterministic SOPInstanceUID (under pydicom's root) of 0-based slice ``k`` of a series.

    The UID depends only on ``series.series_uid``, ``k`` and, when non-empty, ``series.uid_seed``.
    """
    sources = [series.series_uid, str(k)]
    if series.uid_seed:
        sources.append(series.uid_seed)
    return str(generate_uid(entropy_srcs=sources))


def write_ct_series(
    volume_hu: npt.NDArray[np.generic],
    grid: Grid,
    patient: PatientInfo,
    study: StudyInfo,
    series: SeriesInfo,
    out_dir: Path,
    *,
    file_prefix: str = "IM",
    rescale_intercept: float = -1024.0,
) -> list[Path]:
    """Write a volume as one single-frame CT Image Storage file per slice.

    Parameters
    ----------
    volume_hu:
        Hounsfield units, integer or floating point, indexed ``[i, j, k]`` with shape ``grid.shape``.
        Values are rounded to the nearest integer and clipped to the storable range
        ``[rescale_intercept, rescale_intercept + 65535]`` HU.
    grid:
        Placement of the volume in LPS mm. Slice ``k`` is written with ImagePositionPatient at voxel
        ``(0, 0, k)``; k may run along either side of the slice normal, directions may be oblique.
    patient, study, series:
        Pseudonymous identity and acquisition descriptors.
    out_dir:
        Directory for the files; created if missing. Existing files of the same name are replaced.
    file_prefix:
        File names are ``f"{file_prefix}{k + 1:05d}.dcm"``.
    rescale_intercept:
        RescaleIntercept, HU (RescaleSlope is 1).

    Returns
    -------
    list[Path]
        The written files, in slice (k) order.

    Raises
    ------
    InputDataError
        If the volume shape differs from ``grid.shape``, the volume holds non-finite values, or a
        patient/study field is malformed.
    """
    volume = np.asarray(volume_hu)
    _check_inputs(volume, grid, patient, study, rescale_intercept)

    slices, clipped = _to_stored_slices(volume, rescale_intercept)
    bits_stored = 12 if int(slices.max(initial=0)) <= _UINT12_MAX else 16

    d = grid.direction_matrix
    normal = np.cross(d[:, 0], d[:, 1])
    nk = grid.shape[2]
    positions = grid.index_to_lps(np.column_stack([np.zeros(nk), np.zeros(nk), np.arange(nk, dtype=np.float64)]))

    ds = _template(grid, patient, study, series, bits_stored=bits_stored, intercept=rescale_intercept)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for k in range(nk):
        uid = UID(sop_instance_uid(series, k))
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPInstanceUID = uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.SliceLocation = _ds(float(positions[k] @ normal))
        ds.PixelData = slices[k].tobytes()
        path = out_dir / f"{file_prefix}{k + 1:05d}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    if clipped:
        logger.debug(
            "HU values outside [%g, %g] were clipped to the storable range when writing %s",
            rescale_intercept,
            rescale_intercept + _UINT16_MAX,
            out_dir,
        )
    logger.debug("wrote %d CT slices of %dx%d to %s", nk, grid.shape[0], grid.shape[1], out_dir)
    return paths
