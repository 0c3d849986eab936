"""The calcification DICOM SEG: frames on the source instances, read back with highdicom, voxel for voxel."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from export_cases import CALCIUM_HU, MODEL, CtCase

from cardiofm.errors import InputDataError
from cardiofm.exports.seg import SEGMENT_LABEL, mask_to_source_frames, write_seg
from cardiofm.imaging.geometry import Grid


def _instance_slice(ds: pydicom.Dataset) -> int:
    """0-based slice k of an instance on the DICOM grid (the phantom writer numbers instances k + 1)."""
    return int(ds.InstanceNumber) - 1


@pytest.mark.parametrize("orientation", ["hfs", "ffs", "reversed_slices"])
def test_seg_frames_equal_the_mask_on_every_source_instance(
    make_case: Callable[[str], CtCase], tmp_path: Path, orientation: str
) -> None:
    case = make_case(orientation)
    # dcm2niix's array really is laid out differently from the instances (rows flipped; slices reversed for
    # the feet-first and reversed series), so a copy in instance order would fail
    assert case.nifti_grid.direction != case.dicom_grid.direction
    assert not np.array_equal(case.mask_nifti, case.mask_dicom)
    # the NIfTI holds the instances' own voxels (float32 affine round-off aside): copied, not resampled
    assert not mask_to_source_frames(case.mask_nifti, case.nifti_grid, case.datasets).resampled
    seg = write_seg(tmp_path / "seg.dcm", case.mask_nifti, case.nifti_grid, case.datasets, model=MODEL)
    back = hd.seg.segread(tmp_path / "seg.dcm")
    assert back.SOPInstanceUID == seg.SOPInstanceUID
    assert int(back.NumberOfFrames) == len(case.datasets)
    for ds in case.datasets:
        frame = back.get_pixels_by_source_instance([ds.SOPInstanceUID])[0, ..., 0]
        # the instance's own pixels (calcium burnt in) and the DICOM-grid mask, rows = j, columns = i
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(frame, hu > CALCIUM_HU / 2)
        assert np.array_equal(frame, case.mask_dicom[:, :, _instance_slice(ds)].T)
    assert int(case.mask_dicom.sum()) == int(
        back.get_pixels_by_source_instance([d.SOPInstanceUID for d in case.datasets]).sum()
    )


def test_seg_references_the_source_study_series_and_frame_of_reference(
    make_case: Callable[[str], CtCase], tmp_path: Path
) -> None:
    case = make_case("ffs")
    write_seg(tmp_path / "seg.dcm", case.mask_nifti, case.nifti_grid, case.datasets, model=MODEL, series_number=77)
    back = hd.seg.segread(tmp_path / "seg.dcm")
    source = case.datasets[0]
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.SOPInstanceUID not in {d.SOPInstanceUID for d in case.datasets}
    assert back.SeriesNumber == 77
    assert back.PatientID == source.PatientID  # same patient as the CT, so the PACS files it with the study
    referenced = back.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        d.SOPInstanceUID for d in case.datasets
    }
    assert back.SegmentationType == "BINARY"
    (segment,) = back.SegmentSequence
    assert segment.SegmentLabel == SEGMENT_LABEL
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == "cardiofm"
    category, kind = segment.SegmentedPropertyCategoryCodeSequence[0], segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")
    assert (kind.CodeValue, kind.CodingSchemeDesignator) == ("18115005", "SCT")
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("cardiofm", MODEL.version)
    assert MODEL.version in str(back.SoftwareVersions)
    assert back.Manufacturer == "cardiofm"


def test_empty_mask_still_gives_a_valid_seg_with_every_frame(
    make_case: Callable[[str], CtCase], tmp_path: Path
) -> None:
    case = make_case("hfs")
    write_seg(tmp_path / "empty.dcm", np.zeros_like(case.mask_nifti), case.nifti_grid, case.datasets, model=MODEL)
    back = hd.seg.segread(tmp_path / "empty.dcm")
    assert int(back.NumberOfFrames) == len(case.datasets)
    pixels = back.get_pixels_by_source_instance([d.SOPInstanceUID for d in case.datasets])
    assert pixels.shape[0] == len(case.datasets)
    assert not pixels.any()


def test_a_mask_on_another_grid_is_resampled_and_says_so(
    make_case: Callable[[str], CtCase], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    case = make_case("hfs")
    exact = mask_to_source_frames(case.mask_nifti, case.nifti_grid, case.datasets)
    assert not exact.resampled
    # a 1 mm grid that covers the CT's right half only (LPS x below 0 mm): resampled, no exact match possible
    coarse = Grid(shape=(5, 10, 10), spacing_mm=(1.0, 1.0, 1.0), origin_lps_mm=(-4.0, 12.0, 29.0))
    half = np.ones(coarse.shape, dtype=np.uint8)
    caplog.set_level(logging.WARNING, logger="cardiofm")
    write_seg(tmp_path / "resampled.dcm", half, coarse, case.datasets, model=MODEL)
    assert "resampled" in caplog.text
    back = hd.seg.segread(tmp_path / "resampled.dcm")
    for ds in case.datasets:
        frame = back.get_pixels_by_source_instance([ds.SOPInstanceUID])[0, ..., 0]
        x_mm = float(ds.ImagePositionPatient[0]) + np.arange(int(ds.Columns)) * float(ds.PixelSpacing[1])
        assert np.array_equal(frame.any(axis=0), x_mm < 0.5)  # nearest neighbour: up to half a voxel beyond 0


def test_bad_inputs_are_clear_errors(make_case: Callable[[str], CtCase], tmp_path: Path) -> None:
    case = make_case("hfs")
    with pytest.raises(InputDataError, match="mask shape"):
        write_seg(tmp_path / "a.dcm", case.mask_nifti[:, :, :-1], case.nifti_grid, case.datasets, model=MODEL)
    other = copy.deepcopy(case.datasets[0])
    other.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.999"
    with pytest.raises(InputDataError, match="SeriesInstanceUID"):
        write_seg(tmp_path / "b.dcm", case.mask_nifti, case.nifti_grid, [*case.datasets[1:], other], model=MODEL)
    with pytest.raises(InputDataError, match="twice"):
        write_seg(tmp_path / "c.dcm", case.mask_nifti, case.nifti_grid, [*case.datasets, case.datasets[0]], model=MODEL)
    assert not list(tmp_path.glob("*.dcm"))
