"""Contrast-lumen cross-sections of the aortic root: area, perimeter and diameters in a plane.

A plane is given by a centre and two orthonormal in-plane axes ``e1, e2`` (LPS). The CT is resampled
on a square in-plane grid (``pixel_mm`` spacing, ``half_width_mm`` either side of the centre; image axis
0 runs along ``e1``, axis 1 along ``e2``) by trilinear interpolation, then the lumen is segmented:

1. lumen intensity = median HU in a disk of :data:`SEED_RADIUS_MM` around the centre; it must be at least
   :data:`MIN_CONTRAST_HU` (a contrast-enhanced lumen);
2. lumen pixels: HU at least halfway between that lumen intensity and a soft-tissue reference of
   :data:`SOFT_TISSUE_HU`, and below lumen + :data:`CALCIUM_MARGIN_HU` (brighter pixels are calcium: calcium
   bulging into the lumen is left out of it, calcium enclosed by the lumen is filled in by step 4);
3. a morphological opening of radius :data:`OPENING_RADIUS_MM` removes thin protrusions and bridges
   (coronary arteries leaving the sinus, partial-volume contacts with neighbouring chambers);
4. the connected component containing the centre (or the nearest one within the seed disk), holes filled.

A region that reaches the edge of the resampled square is refused (the lumen leaked into another structure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import contourpy
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cardiofm.imaging.geometry import FloatArray, Grid

#: Radius of the disk around the plane centre whose median HU is the lumen intensity, mm.
SEED_RADIUS_MM = 3.0
#: Reference attenuation of the tissue around the lumen (myocardium, aortic wall), HU.
SOFT_TISSUE_HU = 60.0
#: Lowest median lumen HU accepted as contrast-enhanced.
MIN_CONTRAST_HU = 160.0
#: Pixels this far above the lumen intensity are calcium, not lumen (HU).
CALCIUM_MARGIN_HU = 150.0
#: Radius of the opening that removes protrusions narrower than twice this, mm.
OPENING_RADIUS_MM = 2.5
#: Number of projection angles (over 180°) of the caliper diameters.
CALIPER_ANGLES = 180
#: Value outside the CT (air padding), HU.
_OUTSIDE_HU = -1024.0


class LumenNotFound(ValueError):
    """No usable lumen region in a plane; the message is the reason."""


@dataclass(frozen=True)
class LumenSection:
    """The lumen region of one plane and its measures.

    Attributes
    ----------
    area_mm2, perimeter_mm:
        Area and perimeter of the region.
    min_diameter_mm, max_diameter_mm:
        Smallest and largest caliper (Feret) width over :data:`CALIPER_ANGLES` directions.
    lumen_hu:
        Median HU of the seed disk (the lumen intensity).
    median_region_hu:
        Median HU over the whole region.
    threshold_hu:
        The HU threshold used.
    """

    area_mm2: float
    perimeter_mm: float
    min_diameter_mm: float
    max_diameter_mm: float
    lumen_hu: float
    median_region_hu: float
    threshold_hu: float

    @property
    def area_diameter_mm(self) -> float:
        """Area-derived diameter ``2 √(A / π)``, mm."""
        return 2.0 * math.sqrt(self.area_mm2 / math.pi)

    @property
    def perimeter_diameter_mm(self) -> float:
        """Perimeter-derived diameter ``P / π``, mm."""
        return self.perimeter_mm / math.pi

    @property
    def eccentricity(self) -> float:
        """``1 − min / max`` caliper diameter (0 for a circle)."""
        return 1.0 - self.min_diameter_mm / self.max_diameter_mm


def resample_plane(
    hu: npt.NDArray[np.generic],
    grid: Grid,
    centre_lps_mm: FloatArray,
    axes: tuple[FloatArray, FloatArray],
    *,
    half_width_mm: float = 30.0,
    pixel_mm: float = 0.25,
) -> npt.NDArray[np.float32]:
    """HU on a square in-plane grid, shape ``(n, n)``, axis 0 along ``axes[0]``, axis 1 along ``axes[1]``.

    Pixel ``(a, b)`` lies at ``centre + (a − c) pixel_mm e1 + (b − c) pixel_mm e2`` with ``c = (n − 1) / 2``;
    samples outside the CT are :data:`_OUTSIDE_HU`.
    """
    n = 2 * round(half_width_mm / pixel_mm) + 1
    t = (np.arange(n, dtype=np.float64) - (n - 1) / 2) * pixel_mm
    e1, e2 = axes
    pts = centre_lps_mm + t[:, None, None] * e1 + t[None, :, None] * e2
    idx = grid.lps_to_index(pts.reshape(-1, 3)).T
    out = ndimage.map_coordinates(np.asarray(hu, dtype=np.float32), idx, order=1, mode="constant", cval=_OUTSIDE_HU)
    return out.reshape(n, n).astype(np.float32, copy=False)


def segment_lumen(image_hu: npt.NDArray[np.float32], pixel_mm: float) -> tuple[npt.NDArray[np.bool_], float, float]:
    """The lumen region of a resampled plane (see the module docstring).

    Returns
    -------
    tuple
        ``(region mask, lumen_hu, threshold_hu)``.

    Raises
    ------
    LumenNotFound
        If the centre is not contrast-enhanced, no region is near the centre, or the region reaches the edge.
    """
    n = image_hu.shape[0]
    c = (n - 1) / 2
    a, b = np.ogrid[:n, :n]
    dist_px = np.hypot(a - c, b - c)
    seed = dist_px <= SEED_RADIUS_MM / pixel_mm
    lumen_hu = float(np.median(image_hu[seed]))
    if lumen_hu < MIN_CONTRAST_HU:
        raise LumenNotFound(
            f"lumen not found: median {lumen_hu:.0f} HU at the plane centre is below {MIN_CONTRAST_HU:.0f} HU "
            "(not contrast-enhanced, or the centre is off the lumen)"
        )
    threshold = 0.5 * (lumen_hu + SOFT_TISSUE_HU)
    bright = (image_hu >= threshold) & (image_hu < lumen_hu + CALCIUM_MARGIN_HU)
    r_open = OPENING_RADIUS_MM / pixel_mm
    core = ndimage.distance_transform_edt(bright) > r_open
    opened = (ndimage.distance_transform_edt(~core) <= r_open) & bright
    labels, count = ndimage.label(opened)
    if count == 0:
        raise LumenNotFound("lumen not found: no region above the threshold near the plane centre")
    centre_label = int(labels[round(c), round(c)])
    if centre_label == 0:
        near = labels[seed & (labels > 0)]
        if near.size == 0:
            raise LumenNotFound("lumen not found: no lumen region within the seed disk around the plane centre")
        centre_label = int(np.bincount(near).argmax())
    region = ndimage.binary_fill_holes(labels == centre_label)
    if region[0, :].any() or region[-1, :].any() or region[:, 0].any() or region[:, -1].any():
        half = c * pixel_mm
        raise LumenNotFound(f"lumen region reaches {half:.0f} mm from the plane centre (leaks into another structure)")
    return region, lumen_hu, threshold


def _boundary_mm(region: npt.NDArray[np.bool_], pixel_mm: float) -> FloatArray:
    """The region's outer boundary as a closed polygon ``(m, 2)`` in mm (level 0.5 of the lightly smoothed mask)."""
    soft = ndimage.gaussian_filter(np.pad(region.astype(np.float64), 2), sigma=1.0)
    lines = contourpy.contour_generator(z=soft, line_type=contourpy.LineType.Separate).lines(0.5)
    polys = [np.asarray(line, dtype=np.float64) for line in lines if len(line) >= 4]
    if not polys:
        raise LumenNotFound("lumen region has no boundary")
    longest = max(polys, key=lambda p: float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum()))
    return longest * pixel_mm


def measure_region(region: npt.NDArray[np.bool_], pixel_mm: float) -> tuple[float, float, float, float]:
    """Area, perimeter, min and max caliper diameter of a 2-D region.

    Parameters
    ----------
    region:
        Boolean mask on a square pixel grid.
    pixel_mm:
        Pixel size, mm.

    Returns
    -------
    tuple
        ``(area_mm2, perimeter_mm, min_diameter_mm, max_diameter_mm)``: area = pixel count × pixel area;
        perimeter = length of the closed level-0.5 contour of the mask smoothed with a Gaussian of σ = 1 pixel;
        diameters = smallest / largest extent of that contour projected on :data:`CALIPER_ANGLES` directions.
    """
    area = float(region.sum()) * pixel_mm**2
    poly = _boundary_mm(region, pixel_mm)
    closed = np.vstack([poly, poly[:1]]) if not np.allclose(poly[0], poly[-1]) else poly
    perimeter = float(np.linalg.norm(np.diff(closed, axis=0), axis=1).sum())
    theta = np.linspace(0.0, math.pi, CALIPER_ANGLES, endpoint=False)
    proj = poly @ np.stack([np.cos(theta), np.sin(theta)])
    widths = proj.max(axis=0) - proj.min(axis=0)
    return area, perimeter, float(widths.min()), float(widths.max())


def lumen_section(
    hu: npt.NDArray[np.generic],
    grid: Grid,
    centre_lps_mm: FloatArray,
    axes: tuple[FloatArray, FloatArray],
    *,
    pixel_mm: float = 0.25,
) -> LumenSection:
    """Cut the contrast lumen with a plane and measure the cross-section.

    Parameters
    ----------
    hu:
        CT volume in HU, indexed ``[i, j, k]`` on ``grid``.
    grid:
        Geometry of ``hu``.
    centre_lps_mm:
        A point of the plane inside the lumen (LPS mm).
    axes:
        Two orthonormal in-plane unit vectors (LPS).
    pixel_mm:
        In-plane sampling, mm.

    Returns
    -------
    LumenSection
        Area, perimeter, caliper diameters and the HU levels used.

    Raises
    ------
    LumenNotFound
        If the centre lies outside the CT or no lumen region is found (the message is the reason).
    """
    if not grid.contains_index(grid.lps_to_index(centre_lps_mm)):
        raise LumenNotFound("lumen not found: the plane centre lies outside the CT")
    image = resample_plane(hu, grid, centre_lps_mm, axes, pixel_mm=pixel_mm)
    region, lumen_hu, threshold = segment_lumen(image, pixel_mm)
    area, perimeter, dmin, dmax = measure_region(region, pixel_mm)
    return LumenSection(area, perimeter, dmin, dmax, lumen_hu, float(np.median(image[region])), threshold)
