"""Aortic-root calcium: volume per cusp sector, LVOT calcium, Agatston score.

Volumes are arrays indexed ``[i, j, k]`` on a :class:`~cardiofm.imaging.geometry.Grid`; the calcification
mask lies on the CT's grid. Positions are LPS mm, heights along the annular normal (positive = aortic side).

Which voxels count (the HU rule, :func:`calcium_threshold_hu`): with a CT, a mask voxel counts if its HU is at
least the threshold; without a CT every mask voxel counts.

Which calcium belongs to the root: the qualifying voxels are grouped into 26-connected components; a component
is a *root* component if its centroid lies within :data:`ROOT_RADIUS_MM` of the annular axis and between
:data:`ROOT_BELOW_MM` below and :data:`ROOT_ABOVE_MM` above the annular plane. A root component whose centroid
lies within :data:`OSTIUM_EXCLUSION_MM` of a coronary ostium is ostial calcium, not cusp calcium, and is left out.
Every other root component goes to the cusp sector of its centroid's angle around the normal: the sectors are
split halfway between the angles of the hinge points (i.e. the nearest hinge angle wins).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cardiofm.constants import HU_CALCIUM_THRESHOLD
from cardiofm.imaging.geometry import FloatArray, Grid
from cardiofm.measurements.geometry import AnnulusFrame

#: Root bounds of a calcium component's centroid: distance from the annular axis, mm.
ROOT_RADIUS_MM = 25.0
#: Root bounds: lowest height (below the annular plane) and highest height (above it), mm.
ROOT_BELOW_MM = 10.0
ROOT_ABOVE_MM = 25.0
#: Components whose centroid lies this close to a coronary ostium are ostial, not cusp, calcium (mm).
OSTIUM_EXCLUSION_MM = 5.0
#: LVOT calcium: any counted voxel between these depths below the annular plane (mm), within ROOT_RADIUS_MM.
LVOT_DEPTH_RANGE_MM: tuple[float, float] = (1.0, 10.0)
#: Fixed calcium threshold for contrast-enhanced CT, HU.
FIXED_CONTRAST_HU = 850.0
#: Margin above the lumen intensity of the ``lumen+100`` rule, HU.
LUMEN_MARGIN_HU = 100.0
#: Agatston density weights: (lowest peak HU, weight), highest first.
AGATSTON_WEIGHTS: tuple[tuple[float, int], ...] = ((400.0, 4), (300.0, 3), (200.0, 2), (130.0, 1))
#: Smallest Agatston lesion per slice, mm².
AGATSTON_MIN_AREA_MM2 = 1.0
#: Slice thickness of the Agatston definition; other spacings scale the score by spacing / this.
AGATSTON_SLICE_MM = 3.0

#: ``auto``: 130 HU on a non-contrast series, else lumen + 100 HU when the lumen was measured, else 850 HU.
CalciumRule = Literal["auto", "fixed-850", "lumen-plus-100"]


class CalciumUnavailable(ValueError):
    """The calcium measures cannot be computed; the message is the reason."""


@dataclass(frozen=True)
class CuspCalcium:
    """Calcium volumes of the root.

    Attributes
    ----------
    volume_mm3:
        ``{"RCC": ..., "LCC": ..., "NCC": ...}`` cusp-sector volumes, mm³.
    lvot_present:
        Any counted voxel 1–10 mm below the annular plane within the root radius.
    ostial_mm3:
        Volume of the root components left out as ostial calcium, mm³.
    cusp_mask:
        Boolean volume of the voxels counted in a cusp sector (on the mask's grid).
    """

    volume_mm3: dict[str, float]
    lvot_present: bool
    ostial_mm3: float
    cusp_mask: npt.NDArray[np.bool_]

    @property
    def total_mm3(self) -> float:
        """Sum of the three cusp volumes, mm³."""
        return float(sum(self.volume_mm3.values()))


def calcium_threshold_hu(rule: CalciumRule, lumen_hu: float | None, *, non_contrast: bool) -> tuple[float, str]:
    """The HU threshold of a calcium rule and a sentence describing it.

    Parameters
    ----------
    rule:
        ``"fixed-850"``, ``"lumen-plus-100"`` or ``"auto"`` (130 HU on a non-contrast series; else lumen + 100 HU
        when ``lumen_hu`` is known; else 850 HU).
    lumen_hu:
        Median HU of the annulus lumen region, or None when it was not measured.
    non_contrast:
        The series is a non-contrast (calcium-scoring) scan.

    Returns
    -------
    tuple[float, str]
        ``(threshold_hu, method)``.

    Raises
    ------
    CalciumUnavailable
        If the ``lumen-plus-100`` rule is asked for but the lumen was not measured.
    """
    if rule == "fixed-850":
        return FIXED_CONTRAST_HU, f"mask voxels with HU >= {FIXED_CONTRAST_HU:.0f} (fixed threshold)"
    if rule == "lumen-plus-100" or (rule == "auto" and lumen_hu is not None and not non_contrast):
        if lumen_hu is None:
            raise CalciumUnavailable("the lumen+100 HU rule needs the annulus lumen, which was not measured")
        thr = lumen_hu + LUMEN_MARGIN_HU
        return thr, f"mask voxels with HU >= lumen + 100 = {thr:.0f} HU (lumen median {lumen_hu:.0f} HU)"
    if non_contrast:
        return HU_CALCIUM_THRESHOLD, f"mask voxels with HU >= {HU_CALCIUM_THRESHOLD:.0f} (non-contrast series)"
    return FIXED_CONTRAST_HU, f"mask voxels with HU >= {FIXED_CONTRAST_HU:.0f} (fixed; annulus lumen not measured)"


def cusp_calcium(
    mask: npt.NDArray[np.generic],
    grid: Grid,
    frame: AnnulusFrame,
    hinge_angles_rad: Sequence[float],
    *,
    hu: npt.NDArray[np.generic] | None = None,
    threshold_hu: float | None = None,
    ostia_lps_mm: Sequence[FloatArray] = (),
) -> CuspCalcium:
    """Calcium volume per cusp sector and LVOT calcium (rules in the module docstring).

    Parameters
    ----------
    mask:
        Calcification mask (non-zero = calcium), indexed ``[i, j, k]`` on ``grid``.
    grid:
        Geometry of ``mask`` (and ``hu``).
    frame:
        Annular plane.
    hinge_angles_rad:
        Angles of RCC, LCC, NCC around the normal (see :meth:`AnnulusFrame.angle_rad`).
    hu:
        The CT on the same grid; None counts every mask voxel.
    threshold_hu:
        Lowest HU of a counted voxel (needed with ``hu``).
    ostia_lps_mm:
        Positions of the coronary ostia that are known (LPS mm).

    Returns
    -------
    CuspCalcium
        Volumes per cusp, LVOT calcium flag, ostial volume and the counted cusp voxels.
    """
    counted = np.asarray(mask) != 0
    if hu is not None and threshold_hu is not None:
        counted &= np.asarray(hu) >= threshold_hu
    voxel_mm3 = float(np.prod(grid.spacing_mm))
    labels, count = ndimage.label(counted, structure=np.ones((3, 3, 3), dtype=bool))
    volumes = {"RCC": 0.0, "LCC": 0.0, "NCC": 0.0}
    cusp_mask = np.zeros(counted.shape, dtype=bool)
    ostial = 0.0
    lvot = False
    if count == 0:
        return CuspCalcium(volumes, lvot, ostial, cusp_mask)
    idx = np.nonzero(labels)
    comp = labels[idx]
    local = frame.to_local_mm(grid.index_to_lps(np.stack(idx, axis=1)))
    radial = np.hypot(local[:, 0], local[:, 1])
    lo, hi = LVOT_DEPTH_RANGE_MM
    lvot = bool(np.any((radial <= ROOT_RADIUS_MM) & (local[:, 2] <= -lo) & (local[:, 2] >= -hi)))
    sizes = np.bincount(comp, minlength=count + 1).astype(np.float64)
    sums = np.stack([np.bincount(comp, weights=local[:, a], minlength=count + 1) for a in range(3)], axis=1)
    centroids = sums[1:] / sizes[1:, None]
    ostia_local = [frame.to_local_mm(o) for o in ostia_lps_mm]
    names = ("RCC", "LCC", "NCC")
    in_cusps: list[int] = []
    for n, c in enumerate(centroids, start=1):
        if math.hypot(c[0], c[1]) > ROOT_RADIUS_MM or not -ROOT_BELOW_MM <= c[2] <= ROOT_ABOVE_MM:
            continue
        if any(float(np.linalg.norm(c - o)) <= OSTIUM_EXCLUSION_MM for o in ostia_local):
            ostial += sizes[n] * voxel_mm3
            continue
        angle = math.atan2(c[1], c[0])
        k = int(np.argmin([abs(_wrap(angle - h)) for h in hinge_angles_rad]))
        volumes[names[k]] += sizes[n] * voxel_mm3
        in_cusps.append(n)
    if in_cusps:
        cusp_mask = np.isin(labels, in_cusps)
    return CuspCalcium(volumes, lvot, ostial, cusp_mask)


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def is_axial(grid: Grid, tolerance_deg: float = 1.0) -> bool:
    """True if the grid's slices (k axis) run along the patient's long axis, within ``tolerance_deg``."""
    k_axis = grid.direction_matrix[:, 2]
    return abs(float(k_axis[2])) >= math.cos(math.radians(tolerance_deg))


def agatston_score(hu: npt.NDArray[np.generic], grid: Grid, region: npt.NDArray[np.bool_] | None = None) -> float:
    """Agatston score on the axial slices of a non-contrast series.

    Per slice (``hu[:, :, k]``) the lesions are the 8-connected groups of pixels with HU ≥ 130 (inside
    ``region`` when given) whose area is at least 1 mm²; each lesion scores its area (mm²) times a density
    weight from its peak HU: 1 for 130–199, 2 for 200–299, 3 for 300–399, 4 for ≥ 400. The sum over all
    slices is scaled by ``slice spacing / 3 mm`` (Agatston's 3-mm slices; 1 for a 3-mm series).

    Parameters
    ----------
    hu:
        Non-contrast CT, HU, indexed ``[i, j, k]``.
    grid:
        Its geometry; slices must be axial (:func:`is_axial`).
    region:
        Optional boolean volume restricting the lesions (e.g. the aortic-valve calcium).

    Returns
    -------
    float
        The score (dimensionless).

    Raises
    ------
    CalciumUnavailable
        If the slices are not axial.
    """
    if not is_axial(grid):
        raise CalciumUnavailable("Agatston needs axial slices; this series is oblique or not stored slice by slice")
    pixel_mm2 = float(grid.spacing_mm[0] * grid.spacing_mm[1])
    candidate = np.asarray(hu) >= HU_CALCIUM_THRESHOLD
    if region is not None:
        candidate &= region
    score = 0.0
    eight = np.ones((3, 3), dtype=bool)
    for k in np.nonzero(candidate.any(axis=(0, 1)))[0]:
        labels, count = ndimage.label(candidate[:, :, k], structure=eight)
        if count == 0:
            continue
        ids = np.arange(1, count + 1)
        areas = ndimage.sum_labels(np.ones_like(labels), labels, ids) * pixel_mm2
        peaks = ndimage.maximum(np.asarray(hu)[:, :, k], labels, ids)
        for area, peak in zip(np.atleast_1d(areas), np.atleast_1d(peaks), strict=True):
            if area >= AGATSTON_MIN_AREA_MM2:
                score += float(area) * _density_weight(float(peak))
    return score * float(grid.spacing_mm[2]) / AGATSTON_SLICE_MM


def _density_weight(peak_hu: float) -> int:
    for lowest, weight in AGATSTON_WEIGHTS:
        if peak_hu >= lowest:
            return weight
    return 0
