"""Resampling onto isotropic grids that keep the input's direction, and LPS bounding boxes of masks.

The output grid of :func:`resample_to_spacing` has the *same direction* as the input, so each output
axis is parallel to an input axis and the mapping between the two index spaces is a per-axis scale and
offset. Voxels of the output that fall outside the input's field get ``fill_value`` — for CT that must
be the air/padding value ``HU_MIN_STORED`` (−1024 HU), for label maps 0, never a pixel-type enum.

Bounding boxes are ``(min_lps_mm, max_lps_mm)`` pairs of outer *edges* (not voxel centres), axis
aligned in LPS.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cardiofm.contracts.landmarks import Point3
from cardiofm.imaging.geometry import Grid, as_point

logger = logging.getLogger(__name__)

BBoxLps = tuple[Point3, Point3]

#: Output voxels interpolated per call of map_coordinates (bounds the coordinate array's memory).
#: Tolerance when turning an extent into a voxel count (avoids an extra voxel from rounding noise).
_EPS = 1e-6


def world_bbox_of_mask(mask: npt.NDArray[np.generic], grid: Grid) -> BBoxLps:
    """LPS bounding box (outer edges, mm) of the nonzero voxels of ``mask``.

    The box encloses every nonzero voxel centre ± half a voxel along each grid axis, so for oblique
    grids it is the axis-aligned LPS box around the voxels' index-space box.

    Raises
    ------
    ValueError
        If ``mask`` has another shape than ``grid`` or has no nonzero voxel.
    """
    if tuple(mask.shape) != grid.shape:
        raise ValueError(f"mask shape {mask.shape} does not match grid shape {grid.shape}")
    lo_idx = np.empty(3)
    hi_idx = np.empty(3)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=other))
        if present.size == 0:
            raise ValueError("mask is empty: it has no bounding box")
        lo_idx[axis], hi_idx[axis] = present[0] - 0.5, present[-1] + 0.5
    corners = np.array(
        [[a, b, c] for a in (lo_idx[0], hi_idx[0]) for b in (lo_idx[1], hi_idx[1]) for c in (lo_idx[2], hi_idx[2])]
    )
    lps = grid.index_to_lps(corners)
    return as_point(lps.min(axis=0)), as_point(lps.max(axis=0))


def target_grid(grid: Grid, spacing_mm: float, bbox_lps: BBoxLps | None = None) -> Grid:
    """Isotropic grid with ``grid``'s direction covering ``grid``'s field or the LPS box ``bbox_lps``.

    Along each axis the new size is ``ceil(extent / spacing_mm)``; the first voxel's outer edge lies on
    the covered region's lower edge, so the physical extent is preserved (rounded up).
    """
    if not (spacing_mm > 0 and math.isfinite(spacing_mm)):
        raise ValueError(f"spacing_mm must be positive and finite, got {spacing_mm}")
    d = grid.direction_matrix
    origin = np.asarray(grid.origin_lps_mm)
    if bbox_lps is None:
        # region in the grid's own axis frame: voxel edges -0.5 .. n-0.5 scaled to mm
        spacing = np.asarray(grid.spacing_mm)
        lo = -0.5 * spacing
        hi = (np.asarray(grid.shape) - 0.5) * spacing
    else:
        bmin, bmax = np.asarray(bbox_lps[0], dtype=np.float64), np.asarray(bbox_lps[1], dtype=np.float64)
        if np.any(bmax <= bmin) or not np.all(np.isfinite([bmin, bmax])):
            raise ValueError(f"bbox_lps must satisfy min < max on every axis, got {bbox_lps}")
        corners = np.array(
            [[x, y, z] for x in (bmin[0], bmax[0]) for y in (bmin[1], bmax[1]) for z in (bmin[2], bmax[2])]
        )
        local = (corners - origin) @ d  # coordinates along the grid's axes, mm
        lo, hi = local.min(axis=0), local.max(axis=0)
    shape = tuple(max(1, math.ceil((h - lo_) / spacing_mm - _EPS)) for lo_, h in zip(lo, hi, strict=True))
    new_origin = origin + d @ (lo + spacing_mm / 2)
    return Grid(
        shape=(shape[0], shape[1], shape[2]),
        spacing_mm=(spacing_mm, spacing_mm, spacing_mm),
        origin_lps_mm=as_point(new_origin),
        direction=grid.direction,
    )


def resample_onto(
    array: npt.NDArray[np.generic],
    grid: Grid,
    target: Grid,
    *,
    order: int,
    fill_value: float,
    dtype: npt.DTypeLike | None = None,
) -> npt.NDArray[np.generic]:
    """Sample ``array`` (on ``grid``) at the voxel centres of ``target`` (any direction and spacing).

    Interpolation is :func:`scipy.ndimage.affine_transform` with ``mode="constant"``: output voxels
    outside the input's field get exactly ``fill_value``; no coordinate array is built.
    ``dtype`` defaults to float32 for ``order >= 1`` and to the input's dtype for ``order == 0``.
    """
    if tuple(array.shape) != grid.shape:
        raise ValueError(f"array shape {array.shape} does not match grid shape {grid.shape}")
    if order not in (0, 1, 2, 3):
        raise ValueError(f"order must be 0..3, got {order}")
    out_dtype = np.dtype(dtype) if dtype is not None else (array.dtype if order == 0 else np.dtype(np.float32))
    # source index = m @ target index + offset: one affine map (diagonal when both grids share a direction)
    m = np.linalg.inv(grid.affine_lps)[:3, :3] @ target.affine_lps[:3, :3]
    offset = grid.lps_to_index(np.asarray(target.origin_lps_mm))
    src = array if array.dtype != np.bool_ else array.astype(np.uint8)
    diagonal = bool(np.allclose(m, np.diag(np.diag(m)), atol=1e-12))
    out = np.empty(target.shape, dtype=out_dtype)
    ndimage.affine_transform(
        src,
        np.diag(m) if diagonal else m,
        offset=offset,
        output_shape=target.shape,
        output=out,
        order=order,
        mode="constant",
        cval=fill_value,
        prefilter=order > 1,
    )
    logger.debug("resampled %s -> %s (order %d)", grid.shape, target.shape, order)
    return out


def resample_to_spacing(
    array: npt.NDArray[np.generic],
    grid: Grid,
    spacing_mm: float = 1.0,
    *,
    order: int,
    fill_value: float,
    bbox_lps: BBoxLps | None = None,
) -> tuple[npt.NDArray[np.generic], Grid]:
    """Resample ``array`` onto an isotropic ``spacing_mm`` grid with the same direction as ``grid``.

    Parameters
    ----------
    array:
        Volume indexed ``[i, j, k]`` on ``grid``.
    grid:
        The input's grid.
    spacing_mm:
        Output voxel size, mm.
    order:
        Interpolation order: 1 for images, 0 for label maps.
    fill_value:
        Value of output voxels outside the input's field: ``HU_MIN_STORED`` (−1024) for CT, 0 for labels.
    bbox_lps:
        ``(min_lps_mm, max_lps_mm)`` outer edges of the region to cover; None covers the whole input.
        The box may reach outside the input; that part is filled with ``fill_value``.

    Returns
    -------
    tuple
        The resampled array (float32 for ``order >= 1``, the input dtype for ``order == 0``) and its grid.
    """
    target = target_grid(grid, spacing_mm, bbox_lps)
    return resample_onto(array, grid, target, order=order, fill_value=fill_value), target
