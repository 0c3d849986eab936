"""A weight-free heart segmenter for contrast-enhanced cardiac CT (fallback when no model is available).

Heuristic
---------
1. Resample to a coarse isotropic working grid (``WORK_SPACING_MM``, same direction, linear) and smooth
   lightly (Gaussian, σ ≈ 1 working voxel) to suppress noise.
2. Threshold contrast blood: ``BLOOD_MIN_HU < HU < BONE_MIN_HU``. This also keeps cancellous and
   cortical bone below ``BONE_MIN_HU`` (spine, ribs, sternum) and the descending aorta.
3. Remove vertical tubes: columns along the grid axis closest to LPS z that are bright in at least
   ``TUBE_MIN_FRACTION`` of the slices *and* lie posterior of the body's centre are the spine and the
   descending aorta (straight, posterior, crossing the whole coverage); the heart's blood pools never
   fill a column over most of a cardiac coverage. They are cut out with a ``TUBE_MARGIN_MM`` margin.
4. Morphological opening with a ball of ``OPENING_RADIUS_MM``: ribs, sternum, small vessels and thin
   bridges vanish, while the chambers, whose blood pools are thicker than the ball, survive. Keep the
   largest opened component plus other large ones close to it (separately enhanced chambers).
5. Grow the kept cores back (dilate by the opening radius + 2 mm, restricted to the blood mask), fill
   holes, and dilate by ``MYOCARDIUM_MM`` to take in the myocardium, which is not enhanced. The
   dilation adds no bright voxel outside the grown pools (bone touching the heart) and no voxel of the
   vertical-tube columns; enclosed holes (calcium above ``BONE_MIN_HU``) are filled.
6. Map the working-grid mask back onto the input grid (nearest neighbour).

Limits
------
* Needs contrast: a native scan has no blood above ``BLOOD_MIN_HU``; the result is then empty (or tiny
  and rejected) and the caller raises. Very weak or very late contrast behaves the same.
* With an optimal (left-heart) bolus the right heart may stay below the threshold; the mask then covers
  mainly the left heart and the aortic root, grown by ``MYOCARDIUM_MM`` — enough for a crop around the
  aortic valve, not a chamber segmentation.
* Pieces of aorta, pulmonary artery or bone touching the heart within the grow-back distance may be
  included, and the uniform dilation overshoots thin walls (atria); the mask is meant for cropping with
  a margin, not for measurement (Dice ≈ 0.7 against the phantoms' chambers + myocardium).
* The tube test assumes an axial-ish acquisition covering most of the heart (≥ 8 working slices) and a
  body whose centre lies anterior of the spine; on a tight crop or a sagittal grid it may remove little.
* Thresholds are for adult iodinated CTA (left heart ≈ 250–500 HU); they are module constants.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cardiofm.constants import HU_MIN_STORED
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.resample import resample_onto, target_grid

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
Bool = npt.NDArray[np.bool_]

WORK_SPACING_MM = 2.0
#: Gaussian smoothing on the working grid, mm.
SMOOTH_SIGMA_MM = 2.0
BLOOD_MIN_HU = 150.0
BONE_MIN_HU = 700.0
#: Columns along the body axis that are bright in at least this fraction of slices are vertical tubes.
TUBE_MIN_FRACTION = 0.6
#: Vertical tubes are removed with this in-plane margin, mm.
TUBE_MARGIN_MM = 6.0
OPENING_RADIUS_MM = 10.0
MYOCARDIUM_MM = 8.0
#: Extra components are kept when at least this fraction of the largest one's volume ...
SECONDARY_MIN_FRACTION = 0.1
#: ... and no farther than this from it, mm.
SECONDARY_MAX_GAP_MM = 12.0
#: The kept core must hold at least this much blood, mm³; else the result is empty.
MIN_CORE_VOLUME_MM3 = 20_000.0
#: Voxels above this are body; its centre separates anterior from posterior.
BODY_MIN_HU = -500.0


def _dilate(mask: Bool, radius_mm: float) -> Bool:
    """Dilation by a Euclidean ball of ``radius_mm`` on the isotropic working grid."""
    if not mask.any():
        return mask.copy()
    return np.asarray(ndimage.distance_transform_edt(~mask, sampling=WORK_SPACING_MM) <= radius_mm)


def _erode(mask: Bool, radius_mm: float) -> Bool:
    """Erosion by a Euclidean ball of ``radius_mm`` (outside the array counts as background)."""
    padded = np.pad(mask, 1)
    inner = ndimage.distance_transform_edt(padded, sampling=WORK_SPACING_MM) > radius_mm
    return np.asarray(inner[1:-1, 1:-1, 1:-1])


def segment_heart_fallback(hu: npt.NDArray[np.floating], grid: Grid) -> U8:
    """Segment the heart (blood pools + myocardium) of a contrast cardiac CT without model weights.

    Parameters
    ----------
    hu:
        CT volume in HU, indexed ``[i, j, k]`` on ``grid``.
    grid:
        The volume's grid.

    Returns
    -------
    numpy.ndarray
        uint8 mask on ``grid`` (1 = heart); all zeros when no contrast-filled heart is found.
    """
    if tuple(hu.shape) != grid.shape:
        raise ValueError(f"hu shape {hu.shape} does not match grid shape {grid.shape}")
    t0 = time.perf_counter()
    work_grid = target_grid(grid, WORK_SPACING_MM)
    work = resample_onto(hu, grid, work_grid, order=1, fill_value=HU_MIN_STORED)
    work = ndimage.gaussian_filter(work, sigma=SMOOTH_SIGMA_MM / WORK_SPACING_MM, mode="nearest")
    blood = (work > BLOOD_MIN_HU) & (work < BONE_MIN_HU)
    tubes = _vertical_tubes(blood, work, work_grid)
    blood &= ~tubes
    core = _heart_core(blood)
    if core is None:
        logger.info("fallback heart segmentation found no contrast blood pool")
        return np.zeros(grid.shape, dtype=np.uint8)
    grown = (_dilate(core, OPENING_RADIUS_MM + 2.0) & blood) | core
    grown = ndimage.binary_fill_holes(grown)
    # the dilation adds unenhanced tissue only: bright voxels outside the grown pools (bone) stay out
    other_bright = (work > BLOOD_MIN_HU) & ~grown
    heart = ndimage.binary_fill_holes(_dilate(grown, MYOCARDIUM_MM) & ~other_bright & ~tubes)
    mask = _to_input_grid(heart.astype(np.uint8), work_grid, grid)
    logger.info(
        "fallback heart segmentation: %.0f ml in %.2f s",
        float(mask.sum()) * float(np.prod(grid.spacing_mm)) / 1000.0,
        time.perf_counter() - t0,
    )
    return mask


def _vertical_tubes(blood: Bool, work: npt.NDArray[np.float32], grid: Grid) -> Bool:
    """Posterior columns along the body axis that are bright in most slices (spine, descending aorta)."""
    axis = int(np.argmax(np.abs(grid.direction_matrix[2, :])))  # grid axis closest to LPS z
    if grid.shape[axis] < 8:
        return np.zeros_like(blood)
    frac = blood.mean(axis=axis)
    tubes = frac >= TUBE_MIN_FRACTION
    body = work > BODY_MIN_HU
    if tubes.any() and body.any():
        centre = grid.index_to_lps(np.asarray(ndimage.center_of_mass(body), dtype=np.float64))
        mid = (grid.shape[axis] - 1) / 2
        ij = np.indices(frac.shape, dtype=np.float64).reshape(2, -1).T
        idx = np.insert(ij, axis, mid, axis=1)
        posterior = (grid.index_to_lps(idx)[:, 1] > centre[1]).reshape(frac.shape)
        tubes &= posterior
    if not tubes.any():
        return np.zeros_like(blood)
    dist = ndimage.distance_transform_edt(~tubes, sampling=WORK_SPACING_MM)
    return np.expand_dims(dist <= TUBE_MARGIN_MM, axis) & np.ones_like(blood)


def _heart_core(blood: Bool) -> Bool | None:
    """Opened blood-pool components that make up the heart, on the working grid, or None."""
    voxel_mm3 = WORK_SPACING_MM**3
    if not blood.any():
        return None
    opened = _dilate(_erode(blood, OPENING_RADIUS_MM), OPENING_RADIUS_MM) & blood
    labels, n = ndimage.label(opened)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    order = np.argsort(-sizes)
    main = int(order[0])
    if sizes[main] * voxel_mm3 < MIN_CORE_VOLUME_MM3:
        return None
    core = labels == main + 1
    near = _dilate(core, SECONDARY_MAX_GAP_MM)
    for c in order[1:]:
        if sizes[c] < SECONDARY_MIN_FRACTION * sizes[main]:
            break
        component = labels == c + 1
        if np.any(near & component):
            core |= component
    return core


def _to_input_grid(mask: U8, work_grid: Grid, grid: Grid) -> U8:
    """Nearest-neighbour transfer of a working-grid mask onto the input grid (shared direction)."""
    offset = work_grid.lps_to_index(np.asarray(grid.origin_lps_mm))
    scale = np.asarray(grid.spacing_mm) / np.asarray(work_grid.spacing_mm)
    idx = []
    for a in range(3):
        pos = np.rint(offset[a] + scale[a] * np.arange(grid.shape[a])).astype(np.int64)
        idx.append(np.clip(pos, 0, work_grid.shape[a] - 1))
    return mask[np.ix_(idx[0], idx[1], idx[2])].astype(np.uint8)
