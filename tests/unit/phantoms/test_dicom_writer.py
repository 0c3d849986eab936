"""Tests of the synthetic CT DICOM writer: tags, determinism, HU storage and a dcm2niix round trip."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from cardiofm.constants import CT_IMAGE_STORAGE_UID
from cardiofm.errors import InputDataError
from cardiofm.imaging.geometry import Grid, ras_to_lps
from cardiofm.phantoms.dicom_writer import (
    PatientInfo,
    SeriesInfo,
    StudyInfo,
    patient_position,
    write_ct_series,
)

PATIENT = PatientInfo(patient_id="S01-P0007", patient_name="SITE01^PATIENT0007", sex="F", age_years=77)
STUDY = StudyInfo(
    study_uid="1.2.826.0.1.3680043.8.498.100",
    study_id="7",
    accession_number="ACC0007",
    description="CTA heart (synthetic)",
    date="20240102",
    time="093015",
    institution_name="Synthetic Site 01",
)
SERIES = SeriesInfo(
    series_uid="1.2.826.0.1.3680043.8.498.101",
    frame_of_reference_uid="1.2.826.0.1.3680043.8.498.102",
    series_number=3,
    description="CTA 75%",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    slice_thickness_mm=1.0,
    convolution_kernel="Bv36",
    contrast_agent="Iomeprol",
    cardiac_phase_percent=75.0,
    kvp=100.0,
    manufacturer="CardioFM Synthetic",
    manufacturer_model="Phantom CT 1",
)
MARKER_HU = 3333
MARKER_IJK = (5, 14, 6)
Direction = tuple[tuple[float, float, float], ...]
IDENTITY: Direction = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

REQUIRED = (
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "PatientName",
    "PatientID",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "ContentDate",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "SeriesDescription",
    "SeriesNumber",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "ImageType",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "KVP",
    "ConvolutionKernel",
    "BodyPartExamined",
    "PatientPosition",
    "WindowCenter",
    "WindowWidth",
    "BurnedInAnnotation",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "SliceThickness",
    "SliceLocation",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "PixelData",
)


def _rows(m: npt.NDArray[np.float64]) -> Direction:
    return tuple((float(r[0]), float(r[1]), float(r[2])) for r in m)


def _direction(i: tuple[float, ...], j: tuple[float, ...], k: tuple[float, ...]) -> Direction:
    """Grid.direction (rows of the matrix) from the LPS unit vectors of the i, j and k axes."""
    m = np.column_stack([i, j, k]).astype(np.float64)
    return _rows(m)


def _oblique() -> Direction:
    """A rotation by 30 degrees about z, then 10 degrees about x."""
    a, b = np.deg2rad(30.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    m = rx @ rz
    return _rows(m)


def _volume(shape: tuple[int, int, int], seed: int = 0) -> npt.NDArray[np.int16]:
    """Random integer HU in [-1024, 3000] with a unique marker at MARKER_IJK (when it fits)."""
    vol = np.random.default_rng(seed).integers(-1024, 3001, size=shape).astype(np.int16)
    if all(m < n for m, n in zip(MARKER_IJK, shape, strict=True)):
        vol[MARKER_IJK] = MARKER_HU
    return vol


def _grid(
    shape: tuple[int, int, int] = (24, 20, 8),
    spacing: tuple[float, float, float] = (0.5, 0.6, 1.25),
    direction: Direction = IDENTITY,
) -> Grid:
    return Grid(shape=shape, spacing_mm=spacing, origin_lps_mm=(-31.5, 12.25, -140.0), direction=direction)


# --- tags, determinism, HU storage -----------------------------------------------------------------------


def test_files_readable_with_required_tags_and_geometry(tmp_path: Path) -> None:
    grid = _grid()
    vol = _volume(grid.shape)
    paths = write_ct_series(vol, grid, PATIENT, STUDY, SERIES, tmp_path / "s")

    assert paths == [tmp_path / "s" / f"IM{k + 1:05d}.dcm" for k in range(grid.shape[2])]
    uids = set()
    d = grid.direction_matrix
    normal = np.cross(d[:, 0], d[:, 1])
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        missing = [kw for kw in REQUIRED if kw not in ds]
        assert not missing, f"missing tags in slice {k}: {missing}"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE_UID == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.ImplementationClassUID
        assert ds.Modality == "CT"
        assert ds.PatientAge == "077Y"
        assert not ds.get("PatientBirthDate"), "no birth date may be written"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.ContrastBolusAgent == "Iomeprol"
        assert float(ds.NominalPercentageOfCardiacPhase) == pytest.approx(75.0)
        assert float(ds.TriggerTime) == pytest.approx(750.0)
        assert ds.PatientPosition == "HFS"
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert (ds.Rows, ds.Columns) == (grid.shape[1], grid.shape[0])
        assert ds.InstanceNumber == k + 1
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [0.6, 0.5])
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(ipp, grid.index_to_lps((0, 0, k)), atol=1e-9)
        assert float(ds.SliceLocation) == pytest.approx(float(ipp @ normal))
        assert ds.pixel_array.shape == (grid.shape[1], grid.shape[0])
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, vol[:, :, k].T)
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == len(paths)


def test_writing_twice_is_byte_identical(tmp_path: Path) -> None:
    grid = _grid()
    vol = _volume(grid.shape)
    first = write_ct_series(vol, grid, PATIENT, STUDY, SERIES, tmp_path / "a")
    second = write_ct_series(vol, grid, PATIENT, STUDY, SERIES, tmp_path / "b")
    for p, q in zip(first, second, strict=True):
        assert p.read_bytes() == q.read_bytes()
    other = dataclasses.replace(SERIES, series_uid="1.2.826.0.1.3680043.8.498.199")
    third = write_ct_series(vol, grid, PATIENT, STUDY, other, tmp_path / "c")
    assert pydicom.dcmread(third[0]).SOPInstanceUID != pydicom.dcmread(first[0]).SOPInstanceUID


@pytest.mark.parametrize(
    ("low", "high", "bits_stored"),
    [(-1024.0, 3071.0, 12), (-1500.0, 70000.0, 16), (-1024.0, 5000.0, 16)],
)
def test_hu_rounding_clipping_and_bits_stored(tmp_path: Path, low: float, high: float, bits_stored: int) -> None:
    grid = _grid((6, 5, 3))
    vol = np.random.default_rng(1).uniform(low, high, size=grid.shape)
    vol[0, 0, 0], vol[1, 0, 0] = low, high
    paths = write_ct_series(vol, grid, PATIENT, STUDY, SERIES, tmp_path)
    expected = np.clip(np.rint(vol), -1024.0, -1024.0 + 65535.0)
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            16,
            bits_stored,
            bits_stored - 1,
            0,
        )
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept), ds.RescaleType) == (1.0, -1024.0, "HU")
        raw = np.frombuffer(ds.PixelData, dtype="<u2").reshape(grid.shape[1], grid.shape[0])
        np.testing.assert_array_equal(raw.astype(np.float64) - 1024.0, expected[:, :, k].T)


def test_optional_tags_absent_and_single_slice_localizer(tmp_path: Path) -> None:
    grid = _grid((16, 12, 1), direction=_direction((1, 0, 0), (0, 0, -1), (0, 1, 0)))  # coronal
    series = dataclasses.replace(
        SERIES, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), contrast_agent=None, cardiac_phase_percent=None
    )
    (path,) = write_ct_series(np.zeros(grid.shape), grid, PATIENT, STUDY, series, tmp_path, file_prefix="LOC")
    assert path.name == "LOC00001.dcm"
    ds = pydicom.dcmread(path)
    for kw in ("ContrastBolusAgent", "NominalPercentageOfCardiacPhase", "TriggerTime"):
        assert kw not in ds
    assert ds.ImageType[2] == "LOCALIZER"
    np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 0, -1])
    assert int(ds.pixel_array.max()) == 1024


@pytest.mark.parametrize(
    ("i_axis", "j_axis", "expected"),
    [
        ((1, 0, 0), (0, 1, 0), "HFS"),
        ((-1, 0, 0), (0, 1, 0), "FFS"),
        ((-1, 0, 0), (0, -1, 0), "HFP"),
        ((1, 0, 0), (0, -1, 0), "FFP"),
    ],
)
def test_patient_position(i_axis: tuple[int, ...], j_axis: tuple[int, ...], expected: str) -> None:
    k_axis = tuple(int(v) for v in np.cross(i_axis, j_axis))
    assert patient_position(_grid(direction=_direction(i_axis, j_axis, k_axis))) == expected


def test_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"\(24, 20, 7\).*\(24, 20, 8\)"):
        write_ct_series(np.zeros((24, 20, 7)), _grid(), PATIENT, STUDY, SERIES, tmp_path)
    assert not list(tmp_path.iterdir())


def test_non_finite_values_rejected(tmp_path: Path) -> None:
    vol = np.zeros((24, 20, 8))
    vol[1, 2, 3] = np.nan
    with pytest.raises(InputDataError, match="NaN"):
        write_ct_series(vol, _grid(), PATIENT, STUDY, SERIES, tmp_path)


# --- dcm2niix round trip --------------------------------------------------------------------------------

#: case -> (shape, spacing mm, direction)
ROUND_TRIP_CASES: dict[str, tuple[tuple[int, int, int], tuple[float, float, float], Direction]] = {
    "hfs_identity": ((24, 20, 8), (0.5, 0.6, 1.25), IDENTITY),
    "reversed_slices": ((24, 20, 8), (0.5, 0.6, 1.25), _direction((1, 0, 0), (0, 1, 0), (0, 0, -1))),
    "ffs": ((24, 20, 8), (0.5, 0.6, 1.25), _direction((-1, 0, 0), (0, 1, 0), (0, 0, 1))),
    "hfp": ((24, 20, 8), (0.5, 0.6, 1.25), _direction((-1, 0, 0), (0, -1, 0), (0, 0, 1))),
    "anisotropic": ((24, 20, 8), (0.7, 0.8, 2.5), IDENTITY),
    "oblique": ((24, 20, 8), (0.7, 0.8, 2.5), _oblique()),
    "single_slice": ((24, 20, 1), (0.5, 0.6, 1.25), IDENTITY),
}


@pytest.mark.parametrize("case", list(ROUND_TRIP_CASES))
def test_dcm2niix_round_trip(tmp_path: Path, case: str, dcm2niix_exe: str) -> None:
    exe = dcm2niix_exe
    grid = _grid(*ROUND_TRIP_CASES[case])
    vol = _volume(grid.shape, seed=3)
    write_ct_series(vol, grid, PATIENT, STUDY, SERIES, tmp_path / "dcm")

    out = tmp_path / "nii"
    out.mkdir()
    run = subprocess.run(
        [exe, "-z", "y", "-b", "n", "-f", "out", "-o", str(out), str(tmp_path / "dcm")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    niftis = sorted(out.glob("*.nii.gz"))
    log = f"dcm2niix exit {run.returncode}: {run.stdout}{run.stderr}"
    assert run.returncode == 0, log
    assert len(niftis) == 1, log
    img = nib.load(niftis[0])
    assert isinstance(img, nib.Nifti1Image)
    data = np.asarray(img.dataobj, dtype=np.float64).reshape(img.shape[:3])
    assert data.size == vol.size

    # Every dcm2niix voxel must land on an integer index of our grid carrying the same HU.
    nii_idx = np.indices(data.shape).reshape(3, -1).T.astype(np.float64)
    ras = nii_idx @ img.affine[:3, :3].T + img.affine[:3, 3]
    ours = grid.lps_to_index(ras_to_lps(ras))
    rounded = np.rint(ours)
    np.testing.assert_allclose(ours, rounded, atol=1e-3)
    ijk = rounded.astype(int)
    assert (ijk >= 0).all()
    assert (ijk < np.array(grid.shape)).all()
    assert len(np.unique(ijk, axis=0)) == vol.size
    np.testing.assert_array_equal(vol[ijk[:, 0], ijk[:, 1], ijk[:, 2]], data.reshape(-1))

    if grid.shape[2] > MARKER_IJK[2]:
        (hit,) = np.argwhere(data == MARKER_HU)
        marker_ras = img.affine[:3, :3] @ hit + img.affine[:3, 3]
        np.testing.assert_allclose(ras_to_lps(marker_ras), grid.index_to_lps(MARKER_IJK), atol=1e-3)
