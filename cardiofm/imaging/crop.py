"""Heart crop (step ``crop-heart``): cut an isotropic volume around a heart mask.

The crop box is the mask's LPS bounding box grown by ``margin_mm`` on every side. It is **not**
clipped to the image: where the box reaches past the scanned field, the crop is extended with air
(``HU_MIN_STORED``, −1024 HU) and label 0, so every crop carries the full margin around the heart and
downstream models see a consistent context.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cardiofm.constants import HU_MIN_STORED
from cardiofm.errors import InputDataError
from cardiofm.imaging.geometry import Grid, as_point
from cardiofm.imaging.resample import BBoxLps, resample_onto, target_grid, world_bbox_of_mask

logger = logging.getLogger(__name__)

EMPTY_MASK_MESSAGE = (
    "heart segmentation is empty: the series may be non-contrast or not a cardiac CT; check the series selection"
)


@dataclass(frozen=True)
class CropResult:
    """A heart crop resampled to isotropic voxels.

    Attributes
    ----------
    image:
        Cropped HU volume (float32), indexed ``[i, j, k]`` on ``grid``; −1024 outside the scanned field.
    grid:
        Grid of the crop: the input's direction, isotropic ``spacing_mm``.
    mask:
        The heart mask resampled onto ``grid`` (uint8, nearest neighbour).
    bbox_lps_mm:
        ``(min_lps, max_lps)`` outer edges of the cropped region (heart box + margin), LPS mm.
    heart_bbox_lps_mm:
        ``(min_lps, max_lps)`` outer edges of the mask's voxels on the input grid, LPS mm.
    """

    image: npt.NDArray[np.float32]
    grid: Grid
    mask: npt.NDArray[np.uint8]
    bbox_lps_mm: BBoxLps
    heart_bbox_lps_mm: BBoxLps


def crop_heart(
    hu: npt.NDArray[np.floating],
    grid: Grid,
    mask: npt.NDArray[np.generic],
    *,
    margin_mm: float = 20.0,
    spacing_mm: float = 1.0,
) -> CropResult:
    """Crop ``hu`` to the heart ``mask``'s bounding box plus ``margin_mm`` and resample to ``spacing_mm``.

    Parameters
    ----------
    hu:
        CT volume in HU on ``grid``.
    grid:
        Grid of ``hu`` and ``mask``.
    mask:
        Heart mask on ``grid`` (nonzero = heart).
    margin_mm:
        Margin added on every side of the heart's LPS bounding box, mm (≥ 0).
    spacing_mm:
        Isotropic voxel size of the crop, mm.

    Raises
    ------
    InputDataError
        If the mask is empty (non-contrast series, wrong series).
    ValueError
        If shapes disagree or ``margin_mm`` is negative.
    """
    if tuple(hu.shape) != grid.shape or tuple(mask.shape) != grid.shape:
        raise ValueError(f"hu {hu.shape} and mask {mask.shape} must both have the grid's shape {grid.shape}")
    if not margin_mm >= 0:
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
    if not np.any(mask):
        raise InputDataError(EMPTY_MASK_MESSAGE)
    heart_box = world_bbox_of_mask(mask, grid)
    lo = np.asarray(heart_box[0]) - margin_mm
    hi = np.asarray(heart_box[1]) + margin_mm
    box: BBoxLps = (as_point(lo), as_point(hi))
    crop_grid = target_grid(grid, spacing_mm, box)
    image = resample_onto(hu, grid, crop_grid, order=1, fill_value=HU_MIN_STORED, dtype=np.float32)
    crop_mask = resample_onto((mask != 0).astype(np.uint8), grid, crop_grid, order=0, fill_value=0)
    logger.info("heart crop: %s voxels at %.2f mm (input %s)", crop_grid.shape, spacing_mm, grid.shape)
    return CropResult(
        image=image.astype(np.float32, copy=False),
        grid=crop_grid,
        mask=crop_mask.astype(np.uint8, copy=False),
        bbox_lps_mm=box,
        heart_bbox_lps_mm=heart_box,
    )
