"""Tests of the ``convert`` step: header geometry checks, the dcm2niix run, outputs and NIfTI validation."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest

from cardiofm.dicom import convert as convert_module
from cardiofm.dicom.convert import SIDECAR_KEYWORDS, ConversionResult, convert_series, find_dcm2niix, validate_nifti
from cardiofm.errors import ConfigError, ExternalToolError, InputDataError, MissingResourceError
from cardiofm.imaging.geometry import Grid, ras_to_lps
from cardiofm.phantoms.dicom_writer import PatientInfo, SeriesInfo, StudyInfo, write_ct_series

PATIENT = PatientInfo(patient_id="S01-P0042", patient_name="SITE01^PATIENT0042", sex="M", age_years=81)
STUDY = StudyInfo(
    study_uid="1.2.826.0.1.3680043.8.498.200",
    study_id="42",
    accession_number="ACC0042",
    description="CTA heart (synthetic)",
    date="20240305",
    time="101500",
    institution_name="Synthetic Site 01",
)
SERIES = SeriesInfo(
    series_uid="1.2.826.0.1.3680043.8.498.201",
    frame_of_reference_uid="1.2.826.0.1.3680043.8.498.202",
    series_number=4,
    description="CTA 70% Smith",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    slice_thickness_mm=1.0,
    convolution_kernel="Bv36",
    contrast_agent="Iomeprol",
    cardiac_phase_percent=70.0,
    kvp=100.0,
    manufacturer="CardioFM Synthetic",
    manufacturer_model="Phantom CT 1",
)
Direction = tuple[tuple[float, float, float], ...]
SHAPE = (32, 28, 12)
SPACING = (0.7, 0.8, 1.25)


def _direction(i: tuple[float, ...], j: tuple[float, ...], k: tuple[float, ...]) -> Direction:
    m = np.column_stack([i, j, k]).astype(np.float64)
    return tuple((float(r[0]), float(r[1]), float(r[2])) for r in m)


def _oblique() -> Direction:
    """A rotation by 30 degrees about z, then 10 degrees about x."""
    a, b = np.deg2rad(30.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    m = rx @ rz
    return tuple((float(r[0]), float(r[1]), float(r[2])) for r in m)


IDENTITY = _direction((1, 0, 0), (0, 1, 0), (0, 0, 1))
CASES: dict[str, tuple[tuple[float, float, float], Direction]] = {
    "hfs": (SPACING, IDENTITY),
    "ffs": (SPACING, _direction((-1, 0, 0), (0, 1, 0), (0, 0, -1))),
    "reversed_slices": (SPACING, _direction((1, 0, 0), (0, 1, 0), (0, 0, -1))),
    "anisotropic": ((0.45, 0.9, 2.5), IDENTITY),
    "oblique": (SPACING, _oblique()),
}
FORBIDDEN_TEXT = (
    PATIENT.patient_id,
    PATIENT.patient_name,
    STUDY.date,
    STUDY.institution_name,
    STUDY.accession_number,
    STUDY.study_uid,
    SERIES.series_uid,
    SERIES.frame_of_reference_uid,
    "Smith",
)
FORBIDDEN_KEYS = ("PatientID", "PatientName", "StudyDate", "InstitutionName", "SeriesInstanceUID", "AcquisitionTime")


def _grid(spacing: tuple[float, float, float] = SPACING, direction: Direction = IDENTITY) -> Grid:
    return Grid(shape=SHAPE, spacing_mm=spacing, origin_lps_mm=(-11.5, 20.25, -140.0), direction=direction)


def _volume(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> npt.NDArray[np.int16]:
    return np.random.default_rng(seed).integers(-1024, 3001, size=shape).astype(np.int16)


def _series(
    tmp_path: Path, grid: Grid | None = None, *, sub: str = "dcm", series: SeriesInfo = SERIES
) -> tuple[list[Path], npt.NDArray[np.int16], Grid]:
    grid = grid or _grid()
    vol = _volume(grid.shape)
    return write_ct_series(vol, grid, PATIENT, STUDY, series, tmp_path / sub), vol, grid


def _rewrite_positions(files: list[Path], shift: npt.NDArray[np.float64]) -> None:
    """Add ``shift[k]`` (LPS mm) to ImagePositionPatient of file ``k``."""
    for path, delta in zip(files, shift, strict=True):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [f"{float(v) + d:.6f}" for v, d in zip(ds.ImagePositionPatient, delta, strict=True)]
        ds.save_as(path)


def _load(path: Path) -> nib.Nifti1Image:
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image)
    return img


def _assert_voxels_match(nifti: Path, vol: npt.NDArray[np.integer], grid: Grid) -> None:
    """Every NIfTI voxel lands on an integer index of the input grid and carries the same HU."""
    img = _load(nifti)
    assert np.issubdtype(img.get_data_dtype(), np.integer)  # type: ignore[no-untyped-call]
    data = np.asarray(img.dataobj)  # stored integers with the NIfTI scaling applied = HU
    idx = np.indices(data.shape).reshape(3, -1).T.astype(np.float64)
    ras = idx @ img.affine[:3, :3].T + img.affine[:3, 3]
    ours = grid.lps_to_index(ras_to_lps(ras))
    ijk = np.rint(ours)
    np.testing.assert_allclose(ours, ijk, atol=1e-3)
    ijk_int = ijk.astype(int)
    assert (ijk_int >= 0).all()
    assert (ijk_int < np.array(grid.shape)).all()
    assert len(np.unique(ijk_int, axis=0)) == vol.size
    np.testing.assert_array_equal(vol[ijk_int[:, 0], ijk_int[:, 1], ijk_int[:, 2]], data.reshape(-1))


# --- happy paths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_convert_round_trip(tmp_path: Path, case: str) -> None:
    files, vol, grid = _series(tmp_path, _grid(*CASES[case]))
    random.Random(case).shuffle(files)
    out = tmp_path / "out"

    result = convert_series(files, out, name="ct")

    assert isinstance(result, ConversionResult)
    assert sorted(p.name for p in out.iterdir()) == ["ct.json", "ct.nii.gz"]
    assert (result.nifti_path, result.sidecar_path) == (out / "ct.nii.gz", out / "ct.json")
    _assert_voxels_match(result.nifti_path, vol, grid)
    img = _load(result.nifti_path)
    np.testing.assert_allclose(img.affine, result.grid.affine_ras, atol=1e-4)
    assert result.shape == img.shape == result.grid.shape
    assert sorted(result.spacing_mm) == pytest.approx(sorted(grid.spacing_mm), rel=1e-5)
    assert result.orientation == "".join(nib.aff2axcodes(img.affine))  # type: ignore[no-untyped-call]
    assert result.dcm2niix_version.startswith("v")
    assert 0 < result.dcm2niix_seconds <= result.seconds

    text = result.sidecar_path.read_text(encoding="utf-8")
    sidecar = json.loads(text)
    assert set(sidecar) <= {*SIDECAR_KEYWORDS, "PixelSpacing", "SpacingBetweenSlices"} | {
        "ConversionSoftware",
        "ConversionSoftwareVersion",
    }
    assert sidecar["Manufacturer"] == "CardioFM Synthetic"
    assert sidecar["ManufacturerModelName"] == "Phantom CT 1"
    assert sidecar["Modality"] == "CT"
    assert sidecar["ConvolutionKernel"] == "Bv36"
    assert sidecar["KVP"] == pytest.approx(100.0)
    assert sidecar["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert sidecar["SpacingBetweenSlices"] == pytest.approx(grid.spacing_mm[2])
    assert sidecar["PixelSpacing"] == pytest.approx([grid.spacing_mm[1], grid.spacing_mm[0]])
    assert sidecar["ConversionSoftwareVersion"] == result.dcm2niix_version
    for key in FORBIDDEN_KEYS:
        assert key not in sidecar
    for value in FORBIDDEN_TEXT:
        assert value not in text


def test_only_the_given_files_are_converted(tmp_path: Path) -> None:
    files, vol, grid = _series(tmp_path)
    other = dataclasses.replace(SERIES, series_uid="1.2.826.0.1.3680043.8.498.299", series_number=5)
    write_ct_series(_volume(seed=9), grid, PATIENT, STUDY, other, tmp_path / "dcm", file_prefix="OTHER")
    result = convert_series(files, tmp_path / "out")
    assert result.nifti_path.name == "image.nii.gz"
    _assert_voxels_match(result.nifti_path, vol, grid)


def test_uncompressed_output_holds_the_same_voxels(tmp_path: Path) -> None:
    files, vol, grid = _series(tmp_path)
    result = convert_series(files, tmp_path / "out", compress=False)
    assert result.nifti_path.name == "image.nii"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["image.json", "image.nii"]
    assert result.nifti_path.read_bytes()[344:348] == b"n+1\x00"  # a plain NIfTI-1 file, not gzip
    _assert_voxels_match(result.nifti_path, vol, grid)


def test_values_beyond_int16_are_kept(tmp_path: Path) -> None:
    grid = _grid()
    vol = _volume().astype(np.int32)
    vol[3, 4, 5] = 40000
    files = write_ct_series(vol, grid, PATIENT, STUDY, SERIES, tmp_path / "dcm")
    result = convert_series(files, tmp_path / "out")
    data = np.asarray(_load(result.nifti_path).dataobj)
    assert int(data.max()) == 40000
    _assert_voxels_match(result.nifti_path, vol, grid)


# --- bad series: clear message, nothing written -----------------------------------------------------------


def _expect_input_error(files: list[Path], out: Path, pattern: str) -> InputDataError:
    with pytest.raises(InputDataError, match=pattern) as info:
        convert_series(files, out)
    assert not out.exists()
    assert str(out.parent) not in str(info.value), "messages must not contain full paths"
    return info.value


def test_missing_slice(tmp_path: Path) -> None:
    files, _, _ = _series(tmp_path)
    files[5].unlink()
    del files[5]
    _expect_input_error(
        files, tmp_path / "out", r"missing slice\(s\): gap of 2\.500 mm between positions .* expected 1\.250 mm"
    )


def test_mixed_orientations(tmp_path: Path) -> None:
    axial, _, _ = _series(tmp_path, sub="a")
    coronal_grid = _grid(direction=_direction((1, 0, 0), (0, 0, -1), (0, 1, 0)))
    coronal, _, _ = _series(tmp_path, coronal_grid, sub="b")
    _expect_input_error(axial + coronal[:3], tmp_path / "out", r"series mixes 2 orientations")


def test_two_series(tmp_path: Path) -> None:
    first, _, _ = _series(tmp_path, sub="a")
    other = dataclasses.replace(SERIES, series_uid="1.2.826.0.1.3680043.8.498.298")
    second, _, _ = _series(tmp_path, sub="b", series=other)
    _expect_input_error(first + second, tmp_path / "out", r"2 different series")


def test_gantry_tilt(tmp_path: Path) -> None:
    files, _, grid = _series(tmp_path)
    k = np.arange(len(files), dtype=np.float64)
    shift = np.column_stack([np.zeros_like(k), k * grid.spacing_mm[2] * np.tan(np.deg2rad(5.0)), np.zeros_like(k)])
    _rewrite_positions(files, shift)
    _expect_input_error(files, tmp_path / "out", r"gantry tilt of 5\.00 degrees.*without gantry tilt")


def test_small_tilt_is_accepted_by_the_header_checks(tmp_path: Path) -> None:
    from cardiofm.dicom.geometry_checks import read_slice_header, series_grid

    files, _, grid = _series(tmp_path)
    k = np.arange(len(files), dtype=np.float64)
    shift = np.column_stack([np.zeros_like(k), k * grid.spacing_mm[2] * np.tan(np.deg2rad(0.3)), np.zeros_like(k)])
    _rewrite_positions(files, shift)
    found, ordered = series_grid([read_slice_header(p) for p in reversed(files)])
    assert [h.path for h in ordered] == files
    assert found.spacing_mm == pytest.approx(grid.spacing_mm)
    np.testing.assert_allclose(found.affine_lps, grid.affine_lps, atol=1e-6)


def test_duplicate_positions(tmp_path: Path) -> None:
    files, _, _ = _series(tmp_path)
    copy = tmp_path / "dcm" / "COPY.dcm"
    shutil.copyfile(files[4], copy)
    _expect_input_error([*files, copy], tmp_path / "out", r"duplicate slice positions: .*(IM00005|COPY)")


def test_uneven_spacing(tmp_path: Path) -> None:
    files, _, _ = _series(tmp_path)
    shift = np.zeros((len(files), 3))
    shift[6, 2] = -0.5
    _rewrite_positions(files, shift)
    _expect_input_error(files, tmp_path / "out", r"uneven slice spacing: step of 0\.750 mm")


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.2])
def test_truncated_file(tmp_path: Path, cut: float) -> None:
    files, _, _ = _series(tmp_path)
    data = files[4].read_bytes()
    files[4].write_bytes(data[: int(len(data) * cut)])
    error = _expect_input_error(files, tmp_path / "out", r"IM00005\.dcm")
    assert "truncated" in str(error)


def test_not_dicom_and_missing_file(tmp_path: Path) -> None:
    files, _, _ = _series(tmp_path)
    junk = tmp_path / "dcm" / "notes.txt"
    junk.write_text("not an image")
    _expect_input_error([*files, junk], tmp_path / "out", r"notes\.txt is not a DICOM file")
    _expect_input_error([*files, tmp_path / "gone.dcm"], tmp_path / "out", r"gone\.dcm does not exist")


def test_too_few_slices(tmp_path: Path) -> None:
    files, _, _ = _series(tmp_path)
    _expect_input_error(files[:2], tmp_path / "out", r"2 slice\(s\); at least 3")
    _expect_input_error([], tmp_path / "out", r"no DICOM files")


def test_pixel_spacing_must_agree(tmp_path: Path) -> None:
    files, _, _ = _series(tmp_path)
    ds = pydicom.dcmread(files[3])
    ds.PixelSpacing = ["0.9", "0.7"]
    ds.save_as(files[3])
    _expect_input_error(files, tmp_path / "out", r"IM00004\.dcm has PixelSpacing")


def test_bad_output_name(tmp_path: Path) -> None:
    files, _, _ = _series(tmp_path)
    for bad in ("../x", "%p_%s", "", ".hidden"):
        with pytest.raises(ConfigError, match="output name"):
            convert_series(files, tmp_path / "out", name=bad)
    assert not (tmp_path / "out").exists()


# --- dcm2niix discovery and failures ----------------------------------------------------------------------


def test_missing_dcm2niix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setitem(sys.modules, "dcm2niix", None)
    with pytest.raises(MissingResourceError, match="pip install dcm2niix"):
        find_dcm2niix()
    files, _, _ = _series(tmp_path)
    with pytest.raises(MissingResourceError):
        convert_series(files, tmp_path / "out")
    assert not (tmp_path / "out").exists()


FAKE_TOOL = """#!{python}
import sys
from pathlib import Path
import nibabel as nib
import numpy as np
mode = {mode!r}
out = Path(sys.argv[sys.argv.index("-o") + 1])
print("Chris Rorden's dcm2niiX version v9.9.9 (fake)")
if mode == "fail":
    print("Error: something broke")
    sys.exit(7)
affine = np.diag([-0.7, -0.8, 1.25, 1.0])
names = {{"two": ["image", "image_e2"], "wrong": ["image"], "nothing": []}}[mode]
shape = (32, 28, 12) if mode != "wrong" else (32, 28, 11)
for name in names:
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), affine), str(out / (name + ".nii.gz")))
"""


@pytest.mark.parametrize(
    ("mode", "error", "pattern"),
    [
        ("fail", ExternalToolError, r"exit code 7"),
        ("nothing", ExternalToolError, r"wrote no NIfTI"),
        ("two", InputDataError, r"split the series into 2 volumes"),
        ("wrong", ExternalToolError, r"geometry disagrees"),
    ],
)
def test_dcm2niix_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, error: type[Exception], pattern: str
) -> None:
    tool = tmp_path / "fake_dcm2niix"
    tool.write_text(FAKE_TOOL.format(python=sys.executable, mode=mode))
    tool.chmod(0o755)
    monkeypatch.setattr(convert_module, "find_dcm2niix", lambda: tool)
    files, _, _ = _series(tmp_path)
    with pytest.raises(error, match=pattern) as info:
        convert_series(files, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    if isinstance(info.value, ExternalToolError) and mode == "fail":
        assert "something broke" in info.value.log_tail


# --- validate_nifti -------------------------------------------------------------------------------------


def _save(path: Path, data: npt.NDArray[np.generic], affine: npt.NDArray[np.float64]) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))  # type: ignore[no-untyped-call]
    return path


def test_validate_nifti_accepts_a_volume(tmp_path: Path) -> None:
    affine = np.diag([-0.7, -0.8, 1.25, 1.0])
    affine[:3, 3] = (10.0, -5.0, 30.0)
    grid = validate_nifti(_save(tmp_path / "ok.nii.gz", np.zeros((4, 5, 6), np.float32), affine))
    assert grid.shape == (4, 5, 6)
    assert grid.spacing_mm == pytest.approx((0.7, 0.8, 1.25))
    np.testing.assert_allclose(grid.affine_ras, affine, atol=1e-6)
    assert validate_nifti(_save(tmp_path / "four.nii.gz", np.zeros((4, 5, 6, 1), np.int16), affine)).shape == (4, 5, 6)


def test_validate_nifti_rejects_nan(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 6), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    path = _save(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.raises(InputDataError, match=r"nan\.nii\.gz contains 2 NaN or infinite") as info:
        validate_nifti(path)
    assert str(tmp_path) not in str(info.value)


def test_validate_nifti_rejects_4d_shear_and_zero_spacing(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"4d\.nii\.gz has 4 dimensions"):
        validate_nifti(_save(tmp_path / "4d.nii.gz", np.zeros((4, 5, 6, 2), np.int16), np.eye(4)))

    sheared = np.eye(4)
    sheared[0, 2] = 0.2
    with pytest.raises(InputDataError, match=r"shear\.nii\.gz has a sheared affine"):
        validate_nifti(_save(tmp_path / "shear.nii.gz", np.zeros((4, 5, 6), np.int16), sheared))

    zero = _save(tmp_path / "zero.nii", np.zeros((4, 5, 6), np.int16), np.eye(4))
    raw = bytearray(zero.read_bytes())
    raw[296:312] = np.zeros(4, np.float32).tobytes()  # srow_y: j axis of zero length; nibabel refuses to write it
    zero.write_bytes(bytes(raw))
    with pytest.raises(InputDataError, match=r"zero\.nii has a zero voxel spacing"):
        validate_nifti(zero)

    cut = _save(
        tmp_path / "cut.nii.gz", np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32), np.eye(4)
    )
    cut.write_bytes(cut.read_bytes()[:20000])
    with pytest.raises(InputDataError, match=r"voxel data of cut\.nii\.gz .*truncated"):
        validate_nifti(cut)

    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(InputDataError, match=r"cannot read NIfTI file broken\.nii\.gz") as info:
        validate_nifti(broken)
    assert str(tmp_path) not in str(info.value)
