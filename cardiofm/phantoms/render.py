"""Render a patient's anatomy onto a voxel grid: HU volume plus ground-truth label volumes.

Structures are painted back to front (body, lungs, bones, heart, aortic root, vessels, calcium), each
with a soft one-voxel edge. Attenuation values follow contrast-enhanced cardiac CT: blood pools are
set by a :class:`Contrast` (bolus level and timing), calcium peaks between about 180 and 1500 HU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cardiofm.constants import HEART_LABELS, HU_AIR, HU_MIN_STORED
from cardiofm.imaging.geometry import Grid
from cardiofm.phantoms.anatomy import Anatomy, RootGeometry, leaflet_height, wrap_angle
from cardiofm.phantoms.raster import F32, Shape, capsule, ellipsoid, elliptic_cylinder, frame_from_w, paint, tube

U8 = npt.NDArray[np.uint8]
_EYE = np.eye(3)


@dataclass(frozen=True)
class Contrast:
    """Attenuation of the blood pools (HU); ``enhanced=False`` gives a non-contrast scan."""

    enhanced: bool
    aorta_hu: float = 40.0
    right_heart_hu: float = 40.0
    myocardium_hu: float = 45.0

    @classmethod
    def non_contrast(cls) -> Contrast:
        """Native (calcium-scoring) scan: blood and muscle nearly alike."""
        return cls(enhanced=False, aorta_hu=42.0, right_heart_hu=40.0, myocardium_hu=46.0)

    @classmethod
    def enhanced_scan(cls, level_hu: float, timing: str) -> Contrast:
        """Contrast scan with the left heart at ``level_hu``; ``timing`` is early, optimal or late."""
        right = {"early": 1.15, "optimal": 0.5, "late": 0.8}[timing] * level_hu
        return cls(enhanced=True, aorta_hu=level_hu, right_heart_hu=right, myocardium_hu=95.0 + 0.08 * level_hu)


@dataclass
class Rendered:
    """Output of :func:`render`: arrays indexed ``[i, j, k]`` on the render grid."""

    hu: F32
    heart: U8 | None = None
    calcification: U8 | None = None
    coronaries: U8 | None = None


def render(
    anatomy: Anatomy,
    grid: Grid,
    contrast: Contrast,
    noise_hu: float,
    rng: np.random.Generator,
    *,
    with_labels: bool = False,
    fov_mm: float | None = None,
) -> Rendered:
    """Render ``anatomy`` on ``grid``.

    Parameters
    ----------
    noise_hu:
        Standard deviation of the (white) image noise, HU.
    with_labels:
        Also produce the heart label map, calcification mask and coronary mask.
    fov_mm:
        Diameter of the reconstruction circle in the i-j plane; voxels outside are padding
        (``HU_MIN_STORED``), as scanners store them. None: no circle.
    """
    hu = np.full(grid.shape, HU_AIR, dtype=np.float32)
    heart = np.zeros(grid.shape, dtype=np.uint8) if with_labels else None
    calc = np.zeros(grid.shape, dtype=np.uint8) if with_labels else None
    cor = np.zeros(grid.shape, dtype=np.uint8) if with_labels else None

    _paint_body(hu, grid, anatomy, contrast)
    _paint_heart(hu, heart, grid, anatomy, contrast)
    _paint_aorta(hu, heart, grid, anatomy, contrast)
    _paint_root(hu, heart, grid, anatomy, contrast)
    blood = contrast.aorta_hu
    coronary_hu = 0.92 * blood if contrast.enhanced else 38.0
    paths = [anatomy.rca_path, *anatomy.lca_paths]
    for path in paths:
        radii = np.linspace(anatomy.coronary_radius_mm, 0.6 * anatomy.coronary_radius_mm, len(path))
        for seg in tube(path, radii):
            paint(hu, grid, seg, coronary_hu, cor, 1)
    for nod in anatomy.nodules:
        paint(hu, grid, ellipsoid(nod.centre, nod.axes, nod.radii_mm), nod.peak_hu, calc, 1)

    if noise_hu > 0:
        hu += rng.standard_normal(size=hu.shape, dtype=np.float32) * np.float32(noise_hu)
    if fov_mm is not None:
        _apply_fov_circle(hu, grid, fov_mm)
    return Rendered(hu=hu, heart=heart, calcification=calc, coronaries=cor)


def _apply_fov_circle(hu: F32, grid: Grid, fov_mm: float) -> None:
    ni, nj, _ = grid.shape
    x = (np.arange(ni, dtype=np.float32) - (ni - 1) / 2) * np.float32(grid.spacing_mm[0])
    y = (np.arange(nj, dtype=np.float32) - (nj - 1) / 2) * np.float32(grid.spacing_mm[1])
    outside = (x[:, None] ** 2 + y[None, :] ** 2) > (fov_mm / 2) ** 2
    hu[outside, :] = HU_MIN_STORED


def _paint_body(hu: F32, grid: Grid, a: Anatomy, contrast: Contrast) -> None:
    bx, by = a.body_half_axes_mm
    c = a.body_centre
    long_len = 2000.0
    # patient table below the back
    paint(hu, grid, elliptic_cylinder(c + [0, by + 22, 0], _EYE, (bx * 1.3, 9.0), long_len), -250.0)
    paint(hu, grid, elliptic_cylinder(c, _EYE, (bx, by), long_len), -105.0)
    inner = (bx - a.fat_thickness_mm, by - a.fat_thickness_mm * 0.8)
    paint(hu, grid, elliptic_cylinder(c, _EYE, inner, long_len), 48.0)
    liver_hu = 105.0 if contrast.enhanced else 58.0
    paint(hu, grid, ellipsoid(c + [-0.3 * bx, 0.05 * by, -100.0], _EYE, (0.62 * bx, 0.72 * by, 70.0)), liver_hu)
    for side in (-1.0, 1.0):
        lung_c = c + [side * 0.5 * inner[0], 0.08 * inner[1], 30.0]
        radii = (0.47 * inner[0] * (0.92 if side > 0 else 1.0), 0.86 * inner[1], 150.0)
        paint(hu, grid, ellipsoid(lung_c, _EYE, radii), -860.0)
    # spine: vertebral bodies with discs, canal, posterior elements
    spine_c = c + [0.0, 0.6 * inner[1], 0.0]
    paint(hu, grid, elliptic_cylinder(spine_c + [0, 24, 0], _EYE, (15.0, 13.0), long_len), 420.0)
    paint(hu, grid, elliptic_cylinder(spine_c, _EYE, (18.0, 16.0), long_len), 620.0)
    paint(hu, grid, elliptic_cylinder(spine_c, _EYE, (15.0, 13.0), long_len), 230.0)
    for dz in np.arange(-300.0, 300.0, 30.0):
        paint(hu, grid, elliptic_cylinder(spine_c + [0, 0, dz], _EYE, (15.5, 13.5), 2.8), 85.0)
    paint(hu, grid, elliptic_cylinder(spine_c + [0, 24, 0], _EYE, (7.5, 7.0), long_len), 28.0)
    # ribs along the chest wall, sloping down anteriorly
    rib_a, rib_b = 0.93 * inner[0], 0.9 * inner[1]
    for dz in np.arange(-200.0, 200.0, 26.0):
        for side in (-1.0, 1.0):
            angles = np.linspace(math.radians(70), math.radians(-75), 9)  # posterior -> anterior
            pts = np.stack(
                [
                    c[0] + side * rib_a * np.cos(angles),
                    c[1] + rib_b * np.sin(angles),
                    np.full_like(angles, c[2] + dz) - 35.0 * (1 - (angles + math.radians(75)) / math.radians(145)),
                ],
                axis=1,
            )
            for seg in tube(pts, 4.2):
                paint(hu, grid, seg, 480.0)
    paint(hu, grid, ellipsoid(c + [0, -inner[1] + 7, 5.0], _EYE, (14.0, 6.0, 85.0)), 380.0)


def _paint_heart(hu: F32, heart: U8 | None, grid: Grid, a: Anatomy, contrast: Contrast) -> None:
    s = a.heart_scale
    axes = frame_from_w(a.apex_direction, hint=(0.0, 0.0, 1.0))
    lab = HEART_LABELS
    paint(hu, grid, ellipsoid(a.heart_centre, axes, (58 * s, 54 * s, 64 * s)), -85.0)
    left = contrast.aorta_hu
    right = contrast.right_heart_hu
    chambers: list[tuple[Shape, Shape, float, int]] = [
        (
            ellipsoid(a.la_centre, _EYE, (26 * s, 21 * s, 23 * s)),
            ellipsoid(a.la_centre, _EYE, (24 * s, 19 * s, 21 * s)),
            0.96 * left,
            lab["left_atrium"],
        ),
        (
            ellipsoid(a.ra_centre, _EYE, (25 * s, 23 * s, 26 * s)),
            ellipsoid(a.ra_centre, _EYE, (23 * s, 21 * s, 24 * s)),
            right,
            lab["right_atrium"],
        ),
        (
            ellipsoid(a.rv_centre, axes, (22 * s, 26 * s, 40 * s)),
            ellipsoid(a.rv_centre, axes, (17 * s, 21 * s, 35 * s)),
            right,
            lab["right_ventricle"],
        ),
        (
            ellipsoid(a.lv_centre, axes, (31 * s, 31 * s, 46 * s)),
            ellipsoid(a.lv_centre, axes, (21 * s, 21 * s, 37 * s)),
            left,
            lab["left_ventricle"],
        ),
    ]
    for wall, _, _, _ in chambers:
        paint(hu, grid, wall, contrast.myocardium_hu, heart, lab["myocardium"])
    for _, cavity, value, label in chambers:
        paint(hu, grid, cavity, value, heart, label)
    for seg in tube(a.pa_path, 12.5 * s):
        paint(hu, grid, seg, right, heart, lab["pulmonary_artery"])


def _root_shape(root: RootGeometry, extent: tuple[float, float, float], sdf: object) -> Shape:
    axes = np.stack([root.e1, root.e2, root.normal], axis=1)
    return Shape(root.centre, axes, extent, sdf)  # type: ignore[arg-type]


def _paint_root(hu: F32, heart: U8 | None, grid: Grid, a: Anatomy, contrast: Contrast) -> None:
    root = a.root
    r = root.annulus_radius_mm
    top = root.stj_height_mm
    lvot_len = 24.0
    big = r + max(root.sinus_bulge_mm) + 6.0
    extent = (big, big, max(top + 6.0, lvot_len) + 2.0)
    lab = HEART_LABELS

    def polar(u: F32, v: F32) -> tuple[F32, F32]:
        return np.sqrt(u * u + v * v), np.arctan2(v, u).astype(np.float32)

    def radial(u: F32, v: F32, w: F32) -> F32:
        rho, phi = polar(u, v)
        return (rho - np.where(w < 0, np.float32(r), root.wall_radius(phi, w))).astype(np.float32)

    def caps(w: F32) -> F32:
        return np.maximum(-w - lvot_len, w - top - 6.0).astype(np.float32)

    def lumen(u: F32, v: F32, w: F32) -> F32:
        return np.maximum(radial(u, v, w), caps(w) - 2.0)

    def wall(u: F32, v: F32, w: F32) -> F32:
        return np.maximum(radial(u, v, w) - 2.0, caps(w))

    def collar(u: F32, v: F32, w: F32) -> F32:
        rho, _ = polar(u, v)
        return np.maximum(rho - (r + 9.0), np.maximum(-w - lvot_len, w - 1.0)).astype(np.float32)

    ms_half = a.ms_window_half_angle
    d_top, d_bottom = a.ms_depths_mm

    def ms_window(u: F32, v: F32, w: F32) -> F32:
        rho, phi = polar(u, v)
        dphi = np.abs(wrap_angle(phi - np.float32(a.ms_angle)))
        ang = (dphi - ms_half) * r
        radial = np.maximum((r + 1.6) - rho, rho - (r + 13.0))
        height = np.maximum(-d_bottom - w, w + d_top)  # inside: -d_bottom < w < -d_top
        return np.maximum(np.maximum(ang, radial), height).astype(np.float32)

    def lvot(u: F32, v: F32, w: F32) -> F32:
        return np.maximum(lumen(u, v, w), w - 1.0).astype(np.float32)

    def sinus(u: F32, v: F32, w: F32) -> F32:
        return np.maximum(lumen(u, v, w), -w).astype(np.float32)

    def leaflets(u: F32, v: F32, w: F32) -> F32:
        rho, phi = polar(u, v)
        surface = leaflet_height(root, rho, phi)
        inside = rho - root.wall_radius(phi, np.clip(w, 0.0, top)) + 0.2
        return np.maximum(np.abs(w - surface) - root.leaflet_thickness_mm / 2, inside).astype(np.float32)

    blood = contrast.aorta_hu
    paint(hu, grid, _root_shape(root, extent, collar), contrast.myocardium_hu, heart, lab["myocardium"])
    paint(hu, grid, _root_shape(root, extent, wall), 70.0, heart, lab["aorta"])
    paint(hu, grid, _root_shape(root, extent, ms_window), contrast.right_heart_hu, heart, lab["right_atrium"])
    paint(hu, grid, _root_shape(root, extent, lvot), blood, heart, lab["left_ventricle"])
    paint(hu, grid, _root_shape(root, extent, sinus), blood, heart, lab["aorta"])
    leaflet_hu = 95.0 if contrast.enhanced else 45.0
    paint(hu, grid, _root_shape(root, extent, leaflets), leaflet_hu)


def _paint_aorta(hu: F32, heart: U8 | None, grid: Grid, a: Anatomy, contrast: Contrast) -> None:
    """Ascending aorta from the sinotubular junction, arch and descending aorta."""
    lab = HEART_LABELS
    blood = contrast.aorta_hu
    for seg in tube(a.ascending_path, a.aorta_radius_mm):
        paint(hu, grid, seg, blood, heart, lab["aorta"])
    # descending aorta: straight down from the arch
    dx, dy = a.descending_x_y
    top_z = float(a.ascending_path[-1][2])
    paint(
        hu,
        grid,
        capsule([dx, dy, top_z], [dx, dy, top_z - 600.0], 0.82 * a.aorta_radius_mm, 0.8 * a.aorta_radius_mm),
        blood,
        heart,
        lab["aorta"],
    )
