"""Point geometry of the aortic root: annular plane, signed heights, C-arm angles.

All points are DICOM patient coordinates **LPS** in millimetres (+x patient left, +y posterior,
+z superior); vectors are ``(x, y, z)`` arrays in the same frame. Nothing here reads an image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cardiofm.imaging.geometry import FloatArray

#: Hinge-point triangles smaller than this (mm²) are treated as collinear: no plane is defined.
MIN_HINGE_TRIANGLE_AREA_MM2 = 1.0
#: Names of the hinge points (cusp nadirs), in the order the plane uses them.
HINGE_NAMES: tuple[str, str, str] = ("RCC", "LCC", "NCC")
#: Coronary ostia and membranous-septum points used to orient the plane normal.
OSTIA_NAMES: tuple[str, str] = ("RCO", "LCO")
SEPTUM_NAMES: tuple[str, str] = ("MS1", "MS2")


class GeometryUnavailable(ValueError):
    """A geometric quantity cannot be computed from the given points; the message is the reason."""


@dataclass(frozen=True)
class AnnulusFrame:
    """The annular plane as an orthonormal frame.

    Attributes
    ----------
    centre_lps_mm:
        Centre of the circle through the three hinge points (the virtual basal ring), LPS mm.
    normal:
        Unit normal, oriented from the left ventricle towards the aorta (see :func:`annulus_frame`).
    e1:
        In-plane unit vector from the centre towards the RCC hinge point.
    e2:
        ``normal × e1``: in-plane unit vector completing a right-handed frame ``(e1, e2, normal)``.
    radius_mm:
        Radius of the basal ring (circumradius of the hinge points), mm.
    orientation:
        Which rule fixed the sign of the normal: ``"ostia"``, ``"septum"`` or ``"superior"``.
    """

    centre_lps_mm: FloatArray
    normal: FloatArray
    e1: FloatArray
    e2: FloatArray
    radius_mm: float
    orientation: str

    def height_mm(self, point_lps_mm: npt.ArrayLike) -> FloatArray:
        """Signed distance (mm) of points ``(..., 3)`` to the plane; positive on the aortic side."""
        return (np.asarray(point_lps_mm, dtype=np.float64) - self.centre_lps_mm) @ self.normal

    def to_local_mm(self, points_lps_mm: npt.ArrayLike) -> FloatArray:
        """Points ``(..., 3)`` in frame coordinates ``(u, v, w)`` mm: along ``e1``, ``e2``, ``normal``."""
        d = np.asarray(points_lps_mm, dtype=np.float64) - self.centre_lps_mm
        return np.stack([d @ self.e1, d @ self.e2, d @ self.normal], axis=-1)

    def angle_rad(self, points_lps_mm: npt.ArrayLike) -> FloatArray:
        """Angle (rad, in ``(-π, π]``) of points around the normal, from ``e1`` towards ``e2``."""
        local = self.to_local_mm(points_lps_mm)
        return np.arctan2(local[..., 1], local[..., 0])


def finite_point(points_lps: Mapping[str, Sequence[float]], name: str) -> FloatArray | None:
    """The point called ``name`` as a float array, or None when it is absent or has a non-finite coordinate."""
    if name not in points_lps:
        return None
    p = np.asarray(points_lps[name], dtype=np.float64).reshape(-1)
    if p.shape != (3,) or not bool(np.isfinite(p).all()):
        return None
    return p


def missing_reason(points_lps: Mapping[str, Sequence[float]], needed: Sequence[str]) -> str | None:
    """``"needs A, B; missing: B"`` when any of ``needed`` is absent or non-finite, else None."""
    missing = [n for n in needed if finite_point(points_lps, n) is None]
    if not missing:
        return None
    nonfinite = [n for n in missing if n in points_lps]
    detail = f" (non-finite coordinate: {', '.join(nonfinite)})" if nonfinite else ""
    return f"needs {', '.join(needed)}; missing: {', '.join(missing)}{detail}"


def circumcircle_mm(a: FloatArray, b: FloatArray, c: FloatArray) -> tuple[FloatArray, float, FloatArray]:
    """Centre, radius and unit normal of the circle through three points (LPS mm).

    With ``p = a - c`` and ``q = b - c`` the centre is
    ``c + ((|p|² q − |q|² p) × (p × q)) / (2 |p × q|²)`` and the radius ``|p| |q| |p − q| / (2 |p × q|)``;
    the normal is ``(b − a) × (c − a)`` normalised (its sign is fixed by :func:`annulus_frame`).

    Parameters
    ----------
    a, b, c:
        The three points, shape ``(3,)``, mm.

    Returns
    -------
    tuple
        ``(centre (3,), radius_mm, unit normal (3,))``.

    Raises
    ------
    GeometryUnavailable
        If the triangle's area is below :data:`MIN_HINGE_TRIANGLE_AREA_MM2` (collinear or coincident points).
    """
    p = a - c
    q = b - c
    pxq = np.cross(p, q)
    area = 0.5 * float(np.linalg.norm(pxq))
    if area < MIN_HINGE_TRIANGLE_AREA_MM2:
        raise GeometryUnavailable(f"hinge points are collinear (triangle area {area:.1f} mm²)")
    denom = 2.0 * float(pxq @ pxq)
    centre = c + np.cross(float(p @ p) * q - float(q @ q) * p, pxq) / denom
    radius = float(np.linalg.norm(p) * np.linalg.norm(q) * np.linalg.norm(p - q)) / (4.0 * area)
    normal = np.cross(b - a, c - a)
    return centre, radius, normal / np.linalg.norm(normal)


def annulus_frame(points_lps: Mapping[str, Sequence[float]]) -> AnnulusFrame:
    """The annular plane from the hinge points RCC, LCC, NCC.

    The centre is the centre of the circle through the three hinge points (the virtual basal ring).
    The normal is oriented from the left ventricle towards the aorta by the first rule that applies:

    1. ``"ostia"``: the coronary ostia (RCO and/or LCO) lie on the positive side (their mean height > 0);
    2. ``"septum"``: the membranous-septum points (MS1 and/or MS2) lie on the negative side;
    3. ``"superior"``: the normal points towards +z (head).

    Parameters
    ----------
    points_lps:
        ``{canonical name: (x, y, z)}``, LPS mm; must hold finite RCC, LCC, NCC.

    Returns
    -------
    AnnulusFrame
        Centre, oriented normal, in-plane axes and basal-ring radius.

    Raises
    ------
    GeometryUnavailable
        If a hinge point is missing or non-finite, or the three are collinear.
    """
    reason = missing_reason(points_lps, HINGE_NAMES)
    if reason:
        raise GeometryUnavailable(reason)
    hinges = [finite_point(points_lps, n) for n in HINGE_NAMES]
    rcc, lcc, ncc = (p for p in hinges if p is not None)
    centre, radius, normal = circumcircle_mm(rcc, lcc, ncc)
    normal, orientation = _orient(normal, centre, points_lps)
    e1 = rcc - centre
    e1 = e1 - (e1 @ normal) * normal
    e1 = e1 / np.linalg.norm(e1)
    e2 = np.cross(normal, e1)
    return AnnulusFrame(centre, normal, e1, e2, radius, orientation)


def _orient(
    normal: FloatArray, centre: FloatArray, points_lps: Mapping[str, Sequence[float]]
) -> tuple[FloatArray, str]:
    for names, rule, sign in ((OSTIA_NAMES, "ostia", 1.0), (SEPTUM_NAMES, "septum", -1.0)):
        pts = [p for p in (finite_point(points_lps, n) for n in names) if p is not None]
        if pts:
            side = float(np.mean([(p - centre) @ normal for p in pts]))
            if side != 0.0:
                return (normal if side * sign > 0 else -normal), rule
    return (normal if normal[2] >= 0 else -normal), "superior"


def c_arm_angles_deg(direction: npt.ArrayLike) -> tuple[float, float]:
    """C-arm angulation (LAO/RAO, cranial/caudal) whose viewing axis is ``direction``.

    A C-arm at LAO/RAO angle α (positive = LAO) and cranial/caudal angle β (positive = cranial) has its
    detector, seen from the isocentre, along the LPS unit vector
    ``d(α, β) = (sin α cos β, −cos α cos β, sin β)``: α rotates about the patient's long (z) axis from
    anterior (AP, ``d = (0, −1, 0)``) towards the patient's left (LAO 90°, ``d = (1, 0, 0)``), β tilts
    the detector towards the head (cranial 90°, ``d = (0, 0, 1)``). Inverting, with ``d = direction / |direction|``
    flipped if needed so that it points anteriorly (``d_y ≤ 0``: a C-arm keeps its detector in front; on the
    boundary ``d_y = 0`` towards the patient's left, and straight up rather than down)::

        α = atan2(d_x, −d_y),   β = asin(d_z)

    Parameters
    ----------
    direction:
        Viewing axis, LPS ``(x, y, z)``; its sign does not matter (the same line is viewed).

    Returns
    -------
    tuple[float, float]
        ``(lao_rao_deg, cranial_caudal_deg)``; ``α ∈ [−90°, 90°]``, ``β ∈ [−90°, 90°]``.
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3)
    d = d / np.linalg.norm(d)
    if d[1] > 0 or (d[1] == 0 and (d[0] < 0 or (d[0] == 0 and d[2] < 0))):
        d = -d
    lao = math.degrees(math.atan2(float(d[0]), float(-d[1]))) if abs(d[2]) < 1.0 - 1e-12 else 0.0
    cra = math.degrees(math.asin(float(np.clip(d[2], -1.0, 1.0))))
    return lao, cra


def coplanar_cranial_caudal_deg(normal: npt.ArrayLike, lao_rao_deg: float) -> float:
    """Cranial/caudal angle of the coplanar view (annular plane seen edge-on) at a given LAO/RAO angle.

    The coplanar views are those whose viewing axis ``d(α, β)`` (see :func:`c_arm_angles_deg`) is
    perpendicular to the annular normal ``n``; ``d · n = 0`` gives the "S-curve"
    ``tan β = (n_y cos α − n_x sin α) / n_z``.

    Parameters
    ----------
    normal:
        Annular-plane normal, LPS.
    lao_rao_deg:
        LAO (positive) / RAO (negative) angle α, degrees.

    Returns
    -------
    float
        β in degrees (positive = cranial).
    """
    n = np.asarray(normal, dtype=np.float64).reshape(3)
    a = math.radians(lao_rao_deg)
    num = float(n[1]) * math.cos(a) - float(n[0]) * math.sin(a)
    if abs(float(n[2])) < 1e-12:
        return math.copysign(90.0, num)
    return math.degrees(math.atan(num / float(n[2])))
