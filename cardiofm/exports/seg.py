"""The calcification mask as a BINARY DICOM Segmentation (highdicom) on the source CT's own slices.

The mask lives on the grid of the NIfTI that dcm2niix made from the series, whose axes may be flipped,
permuted or reordered relative to the DICOM instances. Every SEG frame is therefore built for one source
instance from that instance's own geometry: each pixel centre (ImagePositionPatient + column/row steps
along ImageOrientationPatient) is mapped through the mask grid to a voxel index. When the grids coincide
(the usual case) every index is an exact integer and the frame is copied voxel for voxel; only when they
truly differ is the mask resampled (nearest neighbour, voxels outside the mask grid read 0), and a
warning says so.

Empty frames are kept (``omit_empty_frames=False``): every frame then references its source instance one
to one, an empty mask still gives a valid SEG with one frame per slice, and viewers need not infer
missing frames. Binary frames are bit-packed, so this costs ``rows * columns / 8`` bytes per slice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from cardiofm.contracts.measurements import ModelInfo
from cardiofm.errors import InputDataError
from cardiofm.exports._source import MANUFACTURER, check_source_series, software_versions
from cardiofm.imaging.geometry import FloatArray, Grid

logger = logging.getLogger(__name__)

#: Label of the one segment.
SEGMENT_LABEL = "Calcification"
#: Largest distance of a mapped pixel centre from a voxel centre still taken as the same point, in voxels.
_EXACT_VOXELS = 1e-3
#: Segmented property type: SCT 18115005 (its full meaning in pydicom's dictionary exceeds the 64 characters of LO).
CALCIFICATION = Code("18115005", "SCT", "Pathologic calcification")
#: Default SeriesNumber of the SEG series.
DEFAULT_SEG_SERIES_NUMBER = 901


@dataclass(frozen=True)
class FrameMapping:
    """Source-instance frames of a mask, in the order of the source instances.

    Attributes
    ----------
    frames:
        ``(n_instances, rows, columns)`` uint8 0/1; ``frames[n]`` lies on source instance ``n``.
    resampled:
        True when the mask grid did not coincide with the source pixels, so nearest-neighbour resampling
        was needed (or some source pixels lie outside the mask grid and read 0).
    """

    frames: npt.NDArray[np.uint8]
    resampled: bool


def _pixel_steps(ds: Dataset, grid: Grid) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Continuous voxel index on ``grid`` of an instance's first pixel centre, and its steps per row and per column.

    The pixel at (row r, column c) lies at ImagePositionPatient + c * column spacing * row direction
    + r * row spacing * column direction (ImageOrientationPatient's first triplet runs along a row), so its
    index is ``first + r * per_row + c * per_column``.
    """
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    row_spacing_mm, col_spacing_mm = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    first = grid.lps_to_index(np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64))
    linear = np.linalg.inv(grid.affine_lps[:3, :3])
    return first, linear @ (row_spacing_mm * iop[3:]), linear @ (col_spacing_mm * iop[:3])


def _plane_index(
    first: int, per_row: int, per_col: int, rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """One axis' voxel index of every pixel of a frame, shaped to broadcast to ``(rows, cols)``.

    Only the dimensions the axis varies along are materialised, so an axis-aligned frame reads a plane without
    full-frame index arrays.
    """
    index = np.full((1, 1), first, dtype=np.int64)
    if per_row:
        index = index + rows[:, None] * per_row
    if per_col:
        index = index + cols[None, :] * per_col
    return index


def _frame(inside: npt.NDArray[np.bool_], grid: Grid, ds: Dataset) -> tuple[npt.NDArray[np.uint8], bool]:
    """The mask on one instance's pixels, and whether that needed resampling (or pixels lie outside the grid)."""
    first, per_row, per_col = _pixel_steps(ds, grid)
    rows, cols = np.arange(int(ds.Rows)), np.arange(int(ds.Columns))
    last = first + rows[-1] * per_row + cols[-1] * per_col
    corners = np.stack([first, first + rows[-1] * per_row, first + cols[-1] * per_col, last])
    # integer steps (to within a drift of _EXACT_VOXELS across the frame) and an integer first pixel
    step_tolerance = _EXACT_VOXELS / max(len(rows), len(cols))
    exact = bool(np.all(np.abs(first - np.rint(first)) <= _EXACT_VOXELS)) and all(
        bool(np.all(np.abs(v - np.rint(v)) <= step_tolerance)) for v in (per_row, per_col)
    )
    covered = bool(np.all((np.rint(corners) >= 0) & (np.rint(corners) <= np.asarray(grid.shape) - 1)))
    if exact and covered:  # the usual case: the same voxels, possibly flipped or reordered; copy them
        f, r, c = (np.rint(v).astype(np.int64) for v in (first, per_row, per_col))
        ijk = [_plane_index(int(f[a]), int(r[a]), int(c[a]), rows, cols) for a in range(3)]
        return inside[ijk[0], ijk[1], ijk[2]].astype(np.uint8), False
    # nearest neighbour; pixels outside the mask grid read 0
    nearest = [
        np.rint(np.add.outer(rows * per_row[a], first[a] + cols * per_col[a])).astype(np.int64) for a in range(3)
    ]
    valid = np.logical_and.reduce([(n >= 0) & (n < size) for n, size in zip(nearest, grid.shape, strict=True)])
    frame = np.zeros(valid.shape, dtype=np.uint8)
    frame[valid] = inside[nearest[0][valid], nearest[1][valid], nearest[2][valid]]
    return frame, True


def mask_to_source_frames(
    mask: npt.NDArray[np.generic], mask_grid: Grid, source_datasets: Sequence[Dataset]
) -> FrameMapping:
    """Put a mask indexed ``[i, j, k]`` on ``mask_grid`` onto the pixels of each source instance.

    Parameters
    ----------
    mask:
        Binary mask (any value > 0 is inside), shape ``mask_grid.shape``.
    mask_grid:
        The mask's grid, LPS mm (e.g. from :func:`~cardiofm.imaging.nifti.load_nifti`).
    source_datasets:
        The single-frame source instances, in any order; the result follows this order.

    Returns
    -------
    FrameMapping

    Raises
    ------
    InputDataError
        If the mask's shape is not the grid's.
    """
    values = np.asarray(mask)
    if values.shape != mask_grid.shape:
        raise InputDataError(f"mask shape {values.shape} differs from its grid's shape {mask_grid.shape}")
    inside = values > 0
    mapped = [_frame(inside, mask_grid, ds) for ds in source_datasets]
    return FrameMapping(np.stack([frame for frame, _ in mapped]), any(r for _, r in mapped))


def _segment(model: ModelInfo) -> hd.seg.SegmentDescription:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=MANUFACTURER, family=codes.cid7162.ArtificialIntelligence, version=model.version
    )
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=CALCIFICATION,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.AorticValve],
        tracking_id="calcification",
        tracking_uid=hd.UID(),
    )


def write_seg(
    path: Path,
    mask: npt.NDArray[np.generic],
    mask_grid: Grid,
    source_datasets: Sequence[Dataset],
    *,
    model: ModelInfo,
    series_number: int = DEFAULT_SEG_SERIES_NUMBER,
) -> hd.seg.Segmentation:
    """Write the calcification mask as a BINARY DICOM SEG of the source series (same study, new series).

    Parameters
    ----------
    path:
        Output file; parent folders are created.
    mask:
        Calcification mask indexed ``[i, j, k]`` (any value > 0 is calcium), shape ``mask_grid.shape``.
    mask_grid:
        Grid of the mask in LPS mm: the grid of the NIfTI dcm2niix made from the series.
    source_datasets:
        The source CT instances (single-frame, one series), in any order; pixel data is not needed.
    model:
        The model that produced the mask: named in the segment's algorithm identification
        (``cardiofm``, model version) and in SoftwareVersions / DeviceSerialNumber (weights SHA-256).
    series_number:
        SeriesNumber of the new SEG series.

    Returns
    -------
    highdicom.seg.Segmentation
        The written SEG (pass it to :func:`~cardiofm.exports.sr.write_sr` to reference it).

    Raises
    ------
    InputDataError
        If the source instances are not one single-frame series with plane geometry, or the mask's shape is
        not its grid's.
    """
    check_source_series(source_datasets)
    mapping = mask_to_source_frames(mask, mask_grid, source_datasets)
    if mapping.resampled:
        logger.warning(
            "the mask grid does not coincide with the source CT pixels; resampled to the source slices "
            "(nearest neighbour)"
        )
    seg = hd.seg.Segmentation(
        source_images=list(source_datasets),
        pixel_array=mapping.frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment(model)],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name,
        software_versions=software_versions(model),
        device_serial_number=model.sha256,
        content_label="CALCIFICATION",
        content_description="Aortic-root calcification (cardiofm)",
        series_description="cardiofm calcification",
        omit_empty_frames=False,
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out, enforce_file_format=True)
    logger.info("wrote a SEG of %d frames, %d calcium pixels", len(source_datasets), int(mapping.frames.sum()))
    return seg
