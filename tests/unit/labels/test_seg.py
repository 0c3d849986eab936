"""Tests of :func:`cardiofm.labels.seg.read_seg_mask` on DICOM SEGs built by highdicom from synthetic CT series."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.uid import generate_uid

from cardiofm.errors import LabelError
from cardiofm.imaging.geometry import Grid
from cardiofm.labels.seg import read_seg_mask
from cardiofm.phantoms.dicom_writer import PatientInfo, SeriesInfo, StudyInfo, write_ct_series

PATIENT = PatientInfo(patient_id="S01-P0003", patient_name="SITE01^PATIENT0003", sex="M", age_years=70)
STUDY = StudyInfo(
    study_uid="1.2.826.0.1.3680043.8.498.200",
    study_id="3",
    accession_number="ACC0003",
    description="CTA heart (synthetic)",
    date="20240102",
    time="093015",
    institution_name="Synthetic Site 01",
)
SERIES = SeriesInfo(
    series_uid="1.2.826.0.1.3680043.8.498.201",
    frame_of_reference_uid="1.2.826.0.1.3680043.8.498.202",
    series_number=3,
    description="CTA 75%",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    slice_thickness_mm=2.0,
    convolution_kernel="Bv36",
    contrast_agent="Iomeprol",
    cardiac_phase_percent=75.0,
    kvp=100.0,
    manufacturer="CardioFM Synthetic",
    manufacturer_model="Phantom CT 1",
)
SHAPE = (12, 10, 8)
SPACING = (0.7, 0.8, 2.0)
Direction = tuple[tuple[float, float, float], ...]
#: Columns are the i, j, k axes in LPS.
HFS: Direction = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
HFS_REVERSED: Direction = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
FFS: Direction = ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
FFS_REVERSED: Direction = ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
CATEGORY = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
CALCIFICATION = hd.sr.CodedConcept("18115005", "SCT", "Pathologic calcification")


def known_mask() -> npt.NDArray[np.uint8]:
    """An asymmetric mask (so a flipped or transposed read would differ) that leaves slices 0, 1 and 7 empty."""
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[2:5, 3:8, 2:6] = 1
    mask[9, 1, 4] = 1
    mask[7, 8, 2:4] = 1
    return mask


def write_series(tmp_path: Path, direction: Direction) -> tuple[list[Path], Grid]:
    grid = Grid(shape=SHAPE, spacing_mm=SPACING, origin_lps_mm=(-20.0, 15.0, 40.0), direction=direction)
    volume = np.full(SHAPE, 40.0)
    return write_ct_series(volume, grid, PATIENT, STUDY, SERIES, tmp_path / "ct"), grid


def make_seg(
    ct_files: list[Path],
    label_map_ijk: npt.NDArray[np.generic],
    out: Path,
    labels: dict[int, str],
    *,
    omit_empty_frames: bool = True,
) -> Path:
    """Write a BINARY SEG over ``ct_files`` (slice k = file k) from a label map indexed ``[i, j, k]``."""
    sources = [pydicom.dcmread(p) for p in ct_files]
    frames = np.ascontiguousarray(np.asarray(label_map_ijk).transpose(2, 1, 0)).astype(np.uint8)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=CATEGORY,
            segmented_property_type=CALCIFICATION,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, label in labels.items()
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="CardioFM Synthetic",
        manufacturer_model_name="Annotator",
        software_versions="1",
        device_serial_number="0",
        omit_empty_frames=omit_empty_frames,
    )
    seg.save_as(out)
    return out


def assert_same_in_world(
    got: npt.NDArray[np.uint8], got_grid: Grid, want: npt.NDArray[np.uint8], want_grid: Grid
) -> None:
    """Source voxel centres land on voxel centres of ``got_grid`` holding the same value; nothing extra.

    A SEG that omits empty frames covers only the slices with mask voxels: source voxels outside the
    returned grid must then be empty.
    """
    ijk = np.indices(want.shape).reshape(3, -1).T.astype(np.float64)
    mapped = got_grid.lps_to_index(want_grid.index_to_lps(ijk))
    rounded = np.rint(mapped)
    assert np.abs(mapped - rounded).max() < 1e-3
    idx = rounded.astype(int)
    inside = ((idx >= 0) & (idx < np.asarray(got.shape))).all(axis=1)
    values = want.reshape(-1)
    assert not values[~inside].any()
    kept = idx[inside]
    np.testing.assert_array_equal(got[kept[:, 0], kept[:, 1], kept[:, 2]], values[inside])
    assert int(got.sum()) == int(want.sum())


@pytest.mark.parametrize("direction", [HFS, HFS_REVERSED, FFS, FFS_REVERSED], ids=["hfs", "hfs-rev", "ffs", "ffs-rev"])
@pytest.mark.parametrize("omit_empty_frames", [True, False], ids=["sparse", "full"])
def test_mask_lands_on_the_same_world_positions(tmp_path: Path, direction: Direction, omit_empty_frames: bool) -> None:
    files, grid = write_series(tmp_path, direction)
    mask = known_mask()
    seg = make_seg(files, mask, tmp_path / "seg.dcm", {1: "Calcification"}, omit_empty_frames=omit_empty_frames)
    got, got_grid = read_seg_mask(seg)
    assert got.dtype == np.uint8
    assert set(np.unique(got).tolist()) <= {0, 1}
    assert got_grid.spacing_mm == pytest.approx(SPACING)
    assert_same_in_world(got, got_grid, mask, grid)


def test_shuffled_source_order_reads_the_same(tmp_path: Path) -> None:
    files, grid = write_series(tmp_path, HFS)
    mask = known_mask()
    order = [5, 0, 7, 2, 6, 1, 4, 3]
    seg = make_seg([files[k] for k in order], mask[:, :, order], tmp_path / "seg.dcm", {1: "calc"})
    got, got_grid = read_seg_mask(seg)
    assert_same_in_world(got, got_grid, mask, grid)


def two_segment_seg(tmp_path: Path, labels: dict[int, str]) -> tuple[Path, Grid, npt.NDArray[np.uint8]]:
    files, grid = write_series(tmp_path, FFS)
    first = known_mask()
    second = np.zeros(SHAPE, dtype=np.uint8)
    second[0:2, 0:2, 6:8] = 1
    label_map = first + 2 * second
    return make_seg(files, label_map, tmp_path / "seg.dcm", labels), grid, second


def test_segment_by_label_number_and_default(tmp_path: Path) -> None:
    seg, grid, second = two_segment_seg(tmp_path, {1: "Aorta", 2: "Valve calcium"})
    for choice in ("valve CALCIUM", 2, None):
        got, got_grid = read_seg_mask(seg, segment=choice)
        assert_same_in_world(got, got_grid, second, grid)
    got, got_grid = read_seg_mask(seg, segment="aorta")
    assert_same_in_world(got, got_grid, known_mask(), grid)


@pytest.mark.parametrize(
    ("labels", "segment", "message"),
    [
        ({1: "Aorta", 2: "Ventricle"}, None, "none or several match 'calc'"),
        ({1: "Calc A", 2: "Calc B"}, None, "none or several match 'calc'"),
        ({1: "Aorta", 2: "Calcium"}, 3, "no segment number 3"),
        ({1: "Aorta", 2: "Calcium"}, "plaque", "no segment labelled 'plaque'"),
        ({1: "calcium", 2: "Calcium"}, "CALCIUM", "several segments labelled"),
    ],
)
def test_unusable_segment_choice(
    tmp_path: Path, labels: dict[int, str], segment: int | str | None, message: str
) -> None:
    seg, _, _ = two_segment_seg(tmp_path, labels)
    with pytest.raises(LabelError, match=message) as info:
        read_seg_mask(seg, segment=segment)
    for number, label in labels.items():
        assert f"{number}: {label!r}" in str(info.value)


def test_not_a_seg(tmp_path: Path) -> None:
    files, _ = write_series(tmp_path, HFS)
    with pytest.raises(LabelError, match=r"^IM00001\.dcm is not a readable DICOM SEG"):
        read_seg_mask(files[0])
    text = tmp_path / "notes.dcm"
    text.write_text("not dicom at all")
    with pytest.raises(LabelError, match=r"^notes\.dcm is not a readable DICOM SEG"):
        read_seg_mask(text)
    with pytest.raises(LabelError, match=r"absent\.dcm"):
        read_seg_mask(tmp_path / "absent.dcm")


def rewrite(seg: Path, change: str) -> Path:
    ds = pydicom.dcmread(seg)
    frames = ds.PerFrameFunctionalGroupsSequence
    if change == "no-positions":
        for item in frames:
            del item.PlanePositionSequence
    elif change == "no-orientation":
        del ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    else:
        position = [float(v) for v in frames[2].PlanePositionSequence[0].ImagePositionPatient]
        position[2] += 0.9
        frames[2].PlanePositionSequence[0].ImagePositionPatient = position
    out = seg.with_name(f"{change}.dcm")
    ds.save_as(out)
    return out


@pytest.mark.parametrize("change", ["no-positions", "no-orientation", "uneven-spacing"])
def test_broken_geometry(tmp_path: Path, change: str) -> None:
    files, _ = write_series(tmp_path, HFS)
    seg = make_seg(files, known_mask(), tmp_path / "seg.dcm", {1: "Calcification"}, omit_empty_frames=False)
    broken = rewrite(seg, change)
    with pytest.raises(LabelError) as info:
        read_seg_mask(broken)
    message = str(info.value)
    assert message.startswith(f"{change}.dcm ")
    assert PATIENT.patient_id not in message
    assert str(tmp_path) not in message
