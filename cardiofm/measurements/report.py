"""Every TAVI measurement of one CT (SCCT 2019 expert consensus set) as a :class:`MeasurementReport`.

Inputs are the landmarks (LPS mm), optionally the CT (HU volume indexed ``[i, j, k]`` with its
:class:`~cardiofm.imaging.geometry.Grid`) and optionally the calcification mask on the CT's grid. A measurement
that cannot be computed is reported ``available: false`` with the reason; only inputs that are plainly wrong
(arrays that do not match their grids, a mask on another grid) raise :class:`~cardiofm.errors.InputDataError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cardiofm.contracts.measurements import AnnularPlane, Measurement, MeasurementReport, Unit
from cardiofm.errors import InputDataError
from cardiofm.imaging.geometry import Grid, as_point
from cardiofm.measurements.calcium import (
    CalciumRule,
    CalciumUnavailable,
    CuspCalcium,
    agatston_score,
    calcium_threshold_hu,
    cusp_calcium,
)
from cardiofm.measurements.geometry import (
    HINGE_NAMES,
    AnnulusFrame,
    GeometryUnavailable,
    annulus_frame,
    c_arm_angles_deg,
    coplanar_cranial_caudal_deg,
    finite_point,
    missing_reason,
)
from cardiofm.measurements.lumen import CALCIUM_MARGIN_HU, LumenNotFound, LumenSection, lumen_section

#: Depth of the LVOT plane below the annular plane, mm.
LVOT_DEPTH_MM = 5.0
#: STJ search: from the sinus plane upwards, this far (mm) in steps of STJ_STEP_MM.
STJ_SEARCH_MM = 20.0
STJ_STEP_MM = 1.0
#: The narrowing has stopped where the next plane is less than this fraction smaller.
STJ_MIN_NARROWING = 0.02
#: ... and the area must have dropped to at most this fraction of the largest section above the sinus.
STJ_MAX_AREA_RATIO = 0.95
#: Where each section's plane lies (for the ``method`` of its measurements).
_PLANES = {
    "annulus": "through the hinge points",
    "lvot": f"{LVOT_DEPTH_MM:.0f} mm below the annular plane",
    "sinus": "at the mean coronary-ostium height",
    "stj": "where the lumen stops narrowing above the sinus",
}
AGATSTON_CONTRAST_REASON = "Agatston needs a non-contrast calcium-scoring series; this CT is contrast-enhanced"

Volume = tuple[npt.NDArray[np.generic], Grid]


@dataclass(frozen=True)
class _Section:
    section: LumenSection | None
    reason: str | None
    #: Height of the plane above the annular plane, mm.
    height_mm: float | None = None


def _m(
    name: str, group: str, unit: Unit, value: float | None, reason: str | None = None, method: str | None = None
) -> Measurement:
    if value is None or not math.isfinite(value):
        return Measurement(name=name, group=group, unit=unit, available=False, reason=reason or "not computed")
    return Measurement(name=name, group=group, unit=unit, value=float(value), method=method)


def measure_all(
    points_lps: Mapping[str, Sequence[float]],
    ct: Volume | None = None,
    calcification: Volume | None = None,
    *,
    non_contrast: bool = False,
    calcium_rule: CalciumRule = "auto",
) -> MeasurementReport:
    """Compute every measurement.

    Parameters
    ----------
    points_lps:
        ``{canonical name: (x, y, z)}``, LPS mm; any subset of ``RCC LCC NCC RCO LCO MS1 MS2``.
    ct:
        ``(hu, grid)``: the CT in HU indexed ``[i, j, k]`` and its geometry, or None.
    calcification:
        ``(mask, grid)``: calcification mask (non-zero = calcium) on the CT's grid, or None.
    non_contrast:
        The CT is a non-contrast calcium-scoring series (enables the Agatston score).
    calcium_rule:
        HU rule of the calcium volumes, see :func:`~cardiofm.measurements.calcium.calcium_threshold_hu`.

    Returns
    -------
    MeasurementReport
        The annular plane (if defined) and every measurement, in a fixed order.

    Raises
    ------
    InputDataError
        If an array does not match its grid or the mask is not on the CT's grid.
    """
    _check_volumes(ct, calcification)
    if ct is not None:
        ct = (np.asarray(ct[0], dtype=np.float32), ct[1])  # once, not per section
    try:
        frame: AnnulusFrame | None = annulus_frame(points_lps)
        plane_reason = ""
    except GeometryUnavailable as exc:
        frame, plane_reason = None, f"no annular plane: {exc}"
    out: list[Measurement] = []
    out += _plane_measures(frame, plane_reason)
    sections = _sections(frame, plane_reason, points_lps, ct)
    for group in ("annulus", "lvot", "sinus", "stj"):
        out += _section_measures(group, sections[group])
    stj = sections["stj"]
    stj_h = stj.height_mm if stj.section is not None else None
    out.append(_m("stj_height_mm", "stj", "mm", stj_h, stj.reason, method="height above the annular plane"))
    out += _heights(frame, plane_reason, points_lps)
    out += _calcium(frame, plane_reason, points_lps, ct, calcification, sections["annulus"], non_contrast, calcium_rule)
    plane = AnnularPlane(centre_mm=as_point(frame.centre_lps_mm), normal=as_point(frame.normal)) if frame else None
    return MeasurementReport(annular_plane=plane, measurements=out)


def _check_volumes(ct: Volume | None, calcification: Volume | None) -> None:
    for what, vol in (("CT", ct), ("calcification mask", calcification)):
        if vol is not None and tuple(vol[0].shape) != tuple(vol[1].shape):
            raise InputDataError(f"{what} array shape {vol[0].shape} does not match its grid {vol[1].shape}")
    if ct is not None and calcification is not None:
        a, b = ct[1], calcification[1]
        if a.shape != b.shape or not np.allclose(a.affine_lps, b.affine_lps, atol=1e-3):
            raise InputDataError(
                "the calcification mask is not on the CT's grid; resample it onto the CT (same shape and affine)"
            )


def _plane_measures(frame: AnnulusFrame | None, reason: str) -> list[Measurement]:
    if frame is None:
        names: list[tuple[str, str, Unit]] = [
            ("basal_ring_diameter_mm", "annulus", "mm"),
            ("projection_lao_rao_deg", "projection", "deg"),
            ("projection_cranial_caudal_deg", "projection", "deg"),
            ("coplanar_cranial_caudal_at_ap_deg", "projection", "deg"),
        ]
        return [_m(n, g, u, None, reason) for n, g, u in names]
    lao, cra = c_arm_angles_deg(frame.normal)
    view = "viewing axis along the annular normal (en-face view); coplanar views are perpendicular to it"
    return [
        _m("basal_ring_diameter_mm", "annulus", "mm", 2.0 * frame.radius_mm, method="circle through RCC, LCC, NCC"),
        _m("projection_lao_rao_deg", "projection", "deg", lao, method=f"{view}; positive = LAO"),
        _m("projection_cranial_caudal_deg", "projection", "deg", cra, method=f"{view}; positive = cranial"),
        _m(
            "coplanar_cranial_caudal_at_ap_deg",
            "projection",
            "deg",
            coplanar_cranial_caudal_deg(frame.normal, 0.0),
            method="cranial/caudal angle of the coplanar (edge-on) view at LAO/RAO 0°; positive = cranial",
        ),
    ]


def _section_at(frame: AnnulusFrame, ct: Volume, height_mm: float, pixel_mm: float = 0.25) -> _Section:
    centre = frame.centre_lps_mm + height_mm * frame.normal
    try:
        section = lumen_section(ct[0], ct[1], centre, (frame.e1, frame.e2), pixel_mm=pixel_mm)
    except LumenNotFound as exc:
        return _Section(None, str(exc), height_mm)
    return _Section(section, None, height_mm)


def _sinus_height(frame: AnnulusFrame, points_lps: Mapping[str, Sequence[float]]) -> float | None:
    ostia = [p for p in (finite_point(points_lps, n) for n in ("RCO", "LCO")) if p is not None]
    return float(np.mean([frame.height_mm(p) for p in ostia])) if ostia else None


def _sections(
    frame: AnnulusFrame | None, plane_reason: str, points_lps: Mapping[str, Sequence[float]], ct: Volume | None
) -> dict[str, _Section]:
    groups = ("annulus", "lvot", "sinus", "stj")
    if frame is None:
        return {g: _Section(None, plane_reason) for g in groups}
    if ct is None:
        return {g: _Section(None, "no CT given") for g in groups}
    out = {"annulus": _section_at(frame, ct, 0.0), "lvot": _section_at(frame, ct, -LVOT_DEPTH_MM)}
    h_sinus = _sinus_height(frame, points_lps)
    if h_sinus is None:
        reason = "needs the sinus level from RCO or LCO; missing: RCO, LCO"
        out["sinus"] = out["stj"] = _Section(None, reason)
        return out
    out["sinus"] = _section_at(frame, ct, h_sinus)
    sinus = out["sinus"].section
    if sinus is None:
        out["stj"] = _Section(None, f"needs the sinus section ({out['sinus'].reason})")
        return out
    h_stj, reason = _find_stj_height(frame, ct, h_sinus, sinus.area_mm2)
    out["stj"] = _section_at(frame, ct, h_stj) if h_stj is not None else _Section(None, reason)
    return out


def _find_stj_height(
    frame: AnnulusFrame, ct: Volume, h_sinus: float, sinus_area_mm2: float
) -> tuple[float | None, str]:
    """Height of the sinotubular junction above the annular plane (mm), or None and why not.

    Sections (0.5-mm pixels) are cut every :data:`STJ_STEP_MM` from the sinus plane upwards for
    :data:`STJ_SEARCH_MM`. Above the largest section, the STJ is the first plane where the narrowing stops
    (the next plane is less than :data:`STJ_MIN_NARROWING` smaller) once the area has dropped to at most
    :data:`STJ_MAX_AREA_RATIO` of that largest section.
    """
    heights = [h_sinus]
    areas = [sinus_area_mm2]
    for h in np.arange(h_sinus + STJ_STEP_MM, h_sinus + STJ_SEARCH_MM + 1e-9, STJ_STEP_MM):
        s = _section_at(frame, ct, float(h), pixel_mm=0.5).section
        if s is None:
            break
        heights.append(float(h))
        areas.append(s.area_mm2)
    peak = int(np.argmax(areas))
    for i in range(peak + 1, len(areas) - 1):
        narrowed = areas[i] <= STJ_MAX_AREA_RATIO * areas[peak]
        if narrowed and areas[i + 1] > areas[i] * (1.0 - STJ_MIN_NARROWING):
            return heights[i], ""
    return None, f"STJ not found: the lumen does not stop narrowing within {STJ_SEARCH_MM:.0f} mm above the sinus"


def _section_measures(group: str, sec: _Section) -> list[Measurement]:
    s = sec.section
    reason = sec.reason
    method = (
        f"lumen: HU >= {s.threshold_hu:.0f} (halfway between lumen {s.lumen_hu:.0f} HU and soft tissue), "
        f"calcium above {s.lumen_hu + CALCIUM_MARGIN_HU:.0f} HU left out; plane {_PLANES[group]}"
        if s
        else None
    )
    values: list[tuple[str, Unit, float | None]] = [
        ("area_mm2", "mm2", s.area_mm2 if s else None),
        ("perimeter_mm", "mm", s.perimeter_mm if s else None),
        ("area_diameter_mm", "mm", s.area_diameter_mm if s else None),
        ("perimeter_diameter_mm", "mm", s.perimeter_diameter_mm if s else None),
        ("min_diameter_mm", "mm", s.min_diameter_mm if s else None),
        ("max_diameter_mm", "mm", s.max_diameter_mm if s else None),
        ("eccentricity", "1", s.eccentricity if s else None),
    ]
    return [_m(f"{group}_{name}", group, unit, v, reason, method) for name, unit, v in values]


def _heights(
    frame: AnnulusFrame | None, plane_reason: str, points_lps: Mapping[str, Sequence[float]]
) -> list[Measurement]:
    out: list[Measurement] = []
    specs: list[tuple[str, str, str, float]] = [
        ("rco_height_mm", "coronaries", "RCO", 1.0),
        ("lco_height_mm", "coronaries", "LCO", 1.0),
    ]
    for name, group, point, sign in specs:
        out.append(_point_height(frame, plane_reason, points_lps, name, group, point, sign))
    ms = missing_reason(points_lps, ("MS1", "MS2"))
    p1, p2 = finite_point(points_lps, "MS1"), finite_point(points_lps, "MS2")
    length = float(np.linalg.norm(p1 - p2)) if p1 is not None and p2 is not None else None
    out.append(_m("ms_length_mm", "septum", "mm", length, ms, method="distance MS1-MS2"))
    for name, point in (("ms1_depth_mm", "MS1"), ("ms2_depth_mm", "MS2")):
        out.append(_point_height(frame, plane_reason, points_lps, name, "septum", point, -1.0))
    return out


def _point_height(
    frame: AnnulusFrame | None,
    plane_reason: str,
    points_lps: Mapping[str, Sequence[float]],
    name: str,
    group: str,
    point: str,
    sign: float,
) -> Measurement:
    needed = (*HINGE_NAMES, point)
    reason = missing_reason(points_lps, needed)
    if reason:
        return _m(name, group, "mm", None, reason)
    p = finite_point(points_lps, point)
    if frame is None or p is None:
        return _m(name, group, "mm", None, plane_reason)
    what = "signed height above" if sign > 0 else "signed depth below"
    return _m(name, group, "mm", sign * float(frame.height_mm(p)), method=f"{what} the annular plane")


def _calcium(
    frame: AnnulusFrame | None,
    plane_reason: str,
    points_lps: Mapping[str, Sequence[float]],
    ct: Volume | None,
    calcification: Volume | None,
    annulus: _Section,
    non_contrast: bool,
    rule: CalciumRule,
) -> list[Measurement]:
    names: list[tuple[str, Unit]] = [
        ("calcium_volume_rcc_mm3", "mm3"),
        ("calcium_volume_lcc_mm3", "mm3"),
        ("calcium_volume_ncc_mm3", "mm3"),
        ("calcium_volume_total_mm3", "mm3"),
        ("lvot_calcium_present", "{present}"),
    ]
    result: CuspCalcium | None = None
    method: str | None = None
    reason = plane_reason
    if frame is not None and calcification is None:
        reason = "no calcification mask given"
    elif frame is not None and calcification is not None:
        try:
            result, method = _cusp_calcium(frame, points_lps, ct, calcification, annulus, non_contrast, rule)
        except CalciumUnavailable as exc:
            reason = str(exc)
    values: list[float | None] = [None] * len(names)
    if result is not None:
        v = result.volume_mm3
        values = [v["RCC"], v["LCC"], v["NCC"], result.total_mm3, 1.0 if result.lvot_present else 0.0]
    out = [_m(n, "calcium", u, val, reason, method) for (n, u), val in zip(names, values, strict=True)]
    out.append(_agatston(ct, result, non_contrast, reason))
    return out


def _cusp_calcium(
    frame: AnnulusFrame,
    points_lps: Mapping[str, Sequence[float]],
    ct: Volume | None,
    calcification: Volume,
    annulus: _Section,
    non_contrast: bool,
    rule: CalciumRule,
) -> tuple[CuspCalcium, str]:
    hinges = [finite_point(points_lps, n) for n in HINGE_NAMES]
    angles = [float(frame.angle_rad(p)) for p in hinges if p is not None]
    ostia = [p for p in (finite_point(points_lps, n) for n in ("RCO", "LCO")) if p is not None]
    mask, grid = calcification
    if ct is None:
        res = cusp_calcium(mask, grid, frame, angles, ostia_lps_mm=ostia)
        return res, "all mask voxels (no CT given, no HU rule)"
    lumen = annulus.section.median_region_hu if annulus.section is not None else None
    threshold, method = calcium_threshold_hu(rule, lumen, non_contrast=non_contrast)
    hu = np.asarray(ct[0], dtype=np.float32)
    res = cusp_calcium(mask, grid, frame, angles, hu=hu, threshold_hu=threshold, ostia_lps_mm=ostia)
    return res, method


def _agatston(ct: Volume | None, calcium: CuspCalcium | None, non_contrast: bool, reason: str) -> Measurement:
    name, group = "agatston_score", "calcium"
    unit: Unit = "{score}"
    if ct is None:
        return _m(name, group, unit, None, "no CT given")
    if not non_contrast:
        return _m(name, group, unit, None, AGATSTON_CONTRAST_REASON)
    if calcium is None:
        return _m(name, group, unit, None, reason)
    try:
        score = agatston_score(np.asarray(ct[0], dtype=np.float32), ct[1], calcium.cusp_mask)
    except CalciumUnavailable as exc:
        return _m(name, group, unit, None, str(exc))
    return _m(name, group, unit, score, method="Agatston on the cusp calcium of the axial slices (130 HU, >= 1 mm²)")
