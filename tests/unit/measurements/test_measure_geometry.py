"""Hand-computed geometry: basal ring, oriented normal, signed heights, septum depths, C-arm angles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cardiofm.contracts.measurements import MeasurementReport
from cardiofm.measurements.geometry import (
    GeometryUnavailable,
    annulus_frame,
    c_arm_angles_deg,
    circumcircle_mm,
    coplanar_cranial_caudal_deg,
)
from cardiofm.measurements.report import measure_all

CENTRE = np.array([10.0, -20.0, 30.0])
RADIUS = 12.0
NORMAL = np.array([-0.6, -0.25, 0.7]) / np.linalg.norm([-0.6, -0.25, 0.7])


def _basis(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = np.cross(n, [0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    return u, np.cross(n, u)


def _root_points(normal: np.ndarray = NORMAL) -> dict[str, tuple[float, float, float]]:
    """Hinges on a known circle in a tilted plane; ostia 14 and 11 mm above; MS1/MS2 3 and 11 mm below."""
    u, v = _basis(normal)

    def at(angle_deg: float, rho: float, w: float) -> tuple[float, float, float]:
        a = math.radians(angle_deg)
        p = CENTRE + rho * (math.cos(a) * u + math.sin(a) * v) + w * normal
        return (float(p[0]), float(p[1]), float(p[2]))

    return {
        "RCC": at(0.0, RADIUS, 0.0),
        "LCC": at(130.0, RADIUS, 0.0),
        "NCC": at(-115.0, RADIUS, 0.0),
        "RCO": at(5.0, RADIUS + 3.0, 14.0),
        "LCO": at(125.0, RADIUS + 4.0, 11.0),
        "MS1": at(-60.0, RADIUS, -3.0),
        "MS2": at(-60.0, RADIUS, -11.0),
    }


def test_circumcircle_of_three_points_on_a_known_tilted_circle() -> None:
    p = {k: np.asarray(v) for k, v in _root_points().items()}
    centre, radius, normal = circumcircle_mm(p["RCC"], p["LCC"], p["NCC"])
    np.testing.assert_allclose(centre, CENTRE, atol=1e-9)
    assert radius == pytest.approx(RADIUS, abs=1e-9)
    assert abs(float(normal @ NORMAL)) == pytest.approx(1.0, abs=1e-12)


def test_normal_orientation_rules() -> None:
    # a normal pointing down (z < 0): the ostia on its side win over "superior"
    down = np.array([0.3, -0.2, -0.9]) / np.linalg.norm([0.3, -0.2, -0.9])
    pts = _root_points(down)
    frame = annulus_frame(pts)
    assert frame.orientation == "ostia"
    np.testing.assert_allclose(frame.normal, down, atol=1e-12)
    septum_only = {k: v for k, v in pts.items() if k not in ("RCO", "LCO")}
    frame = annulus_frame(septum_only)
    assert frame.orientation == "septum"
    np.testing.assert_allclose(frame.normal, down, atol=1e-12)
    hinges = {k: pts[k] for k in ("RCC", "LCC", "NCC")}
    frame = annulus_frame(hinges)
    assert frame.orientation == "superior"
    np.testing.assert_allclose(frame.normal, -down, atol=1e-12)
    # the frame is right-handed, e1 towards RCC
    np.testing.assert_allclose(np.cross(frame.e1, frame.e2), frame.normal, atol=1e-12)
    assert float(frame.angle_rad(np.asarray(pts["RCC"]))) == pytest.approx(0.0, abs=1e-12)


def test_report_heights_depths_and_ring_from_hand_built_points() -> None:
    report = measure_all(_root_points())
    values = {m.name: m.value for m in report.measurements}
    assert values["basal_ring_diameter_mm"] == pytest.approx(2 * RADIUS, abs=1e-9)
    assert values["rco_height_mm"] == pytest.approx(14.0, abs=1e-9)
    assert values["lco_height_mm"] == pytest.approx(11.0, abs=1e-9)
    assert values["ms1_depth_mm"] == pytest.approx(3.0, abs=1e-9)
    assert values["ms2_depth_mm"] == pytest.approx(11.0, abs=1e-9)
    assert values["ms_length_mm"] == pytest.approx(8.0, abs=1e-9)
    assert report.annular_plane is not None
    np.testing.assert_allclose(report.annular_plane.normal, NORMAL, atol=1e-12)
    np.testing.assert_allclose(report.annular_plane.centre_mm, CENTRE, atol=1e-9)
    # an ostium below the plane has a negative height (the mean ostium height, with LCO at +11, fixes the sign)
    below = dict(_root_points())
    below["RCO"] = tuple(float(c) for c in CENTRE - 2.0 * NORMAL)  # type: ignore[assignment]
    below_report = measure_all(below)
    assert below_report.get("rco_height_mm").value == pytest.approx(-2.0, abs=1e-9)
    # the report round-trips through its JSON schema
    again = MeasurementReport.model_validate_json(report.model_dump_json(by_alias=True))
    assert again == report
    assert '"schema": "cardiofm.measurements/1"' in report.model_dump_json(by_alias=True, indent=1)


def _d(lao: float, cra: float) -> np.ndarray:
    a, b = math.radians(lao), math.radians(cra)
    return np.array([math.sin(a) * math.cos(b), -math.cos(a) * math.cos(b), math.sin(b)])


@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        ((0.0, -1.0, 0.0), (0.0, 0.0)),  # straight anterior: AP
        ((1.0, -1.0, 0.0), (45.0, 0.0)),  # patient left-anterior: LAO 45
        ((-1.0, -1.0, 0.0), (-45.0, 0.0)),  # patient right-anterior: RAO 45
        ((1.0, 0.0, 0.0), (90.0, 0.0)),  # patient left: LAO 90 (lateral)
        ((0.0, -1.0, 1.0), (0.0, 45.0)),  # anterior-superior: cranial 45
        ((0.0, -1.0, -1.0), (0.0, -45.0)),  # anterior-inferior: caudal 45
        ((0.0, 0.0, 1.0), (0.0, 90.0)),  # head: cranial 90
        ((0.0, 1.0, 0.0), (0.0, 0.0)),  # posterior: the same line as AP
        ((1.0, 1.0, 0.0), (-45.0, 0.0)),  # left-posterior = right-anterior line: RAO 45
        (tuple(_d(30.0, 20.0)), (30.0, 20.0)),  # LAO 30 CRA 20 by construction
        (tuple(_d(-25.0, -15.0)), (-25.0, -15.0)),  # RAO 25 CAU 15
    ],
)
def test_c_arm_angles_of_known_directions(direction: tuple[float, float, float], expected: tuple[float, float]) -> None:
    lao, cra = c_arm_angles_deg(direction)
    assert lao == pytest.approx(expected[0], abs=1e-9)
    assert cra == pytest.approx(expected[1], abs=1e-9)
    lao_neg, cra_neg = c_arm_angles_deg(-np.asarray(direction))
    assert (lao_neg, cra_neg) == pytest.approx((lao, cra), abs=1e-9)


def test_coplanar_s_curve_is_perpendicular_to_the_normal() -> None:
    n = np.array([0.0, -1.0, 1.0]) / math.sqrt(2.0)
    assert coplanar_cranial_caudal_deg(n, 0.0) == pytest.approx(-45.0, abs=1e-9)  # AP caudal 45 sees it edge-on
    for lao in (-40.0, -10.0, 0.0, 25.0, 60.0):
        beta = coplanar_cranial_caudal_deg(NORMAL, lao)
        assert float(_d(lao, beta) @ NORMAL) == pytest.approx(0.0, abs=1e-12)
    report = measure_all(_root_points())
    lao, cra = c_arm_angles_deg(NORMAL)
    assert report.get("projection_lao_rao_deg").value == pytest.approx(lao)
    assert report.get("projection_cranial_caudal_deg").value == pytest.approx(cra)
    assert report.get("coplanar_cranial_caudal_at_ap_deg").value == pytest.approx(
        math.degrees(math.atan(NORMAL[1] / NORMAL[2]))
    )


def test_collinear_hinges_give_reasons_not_numbers() -> None:
    pts = {"RCC": (0.0, 0.0, 0.0), "LCC": (10.0, 0.0, 0.0), "NCC": (20.0, 0.0, 0.0), "RCO": (5.0, 5.0, 10.0)}
    with pytest.raises(GeometryUnavailable, match="collinear"):
        annulus_frame(pts)
    report = measure_all(pts)
    assert report.annular_plane is None
    ring = report.get("basal_ring_diameter_mm")
    assert not ring.available
    assert ring.value is None
    assert ring.reason is not None
    assert "hinge points are collinear (triangle area 0.0 mm²)" in ring.reason
    assert "collinear" in (report.get("rco_height_mm").reason or "")
    assert "collinear" in (report.get("projection_lao_rao_deg").reason or "")


def test_missing_and_non_finite_points_give_reasons() -> None:
    pts = _root_points()
    no_ncc = {k: v for k, v in pts.items() if k != "NCC"}
    report = measure_all(no_ncc)
    assert report.get("basal_ring_diameter_mm").reason == "no annular plane: needs RCC, LCC, NCC; missing: NCC"
    assert report.get("rco_height_mm").reason == "needs RCC, LCC, NCC, RCO; missing: NCC"
    assert report.get("ms_length_mm").value == pytest.approx(8.0)  # needs no plane
    assert report.get("annulus_area_mm2").reason is not None
    nan = dict(pts)
    nan["LCC"] = (float("nan"), 0.0, 0.0)
    nan_report = measure_all(nan)
    reason = nan_report.get("basal_ring_diameter_mm").reason or ""
    assert "missing: LCC" in reason
    assert "non-finite" in reason
    no_lco = {k: v for k, v in pts.items() if k != "LCO"}
    assert measure_all(no_lco).get("lco_height_mm").reason == "needs RCC, LCC, NCC, LCO; missing: LCO"
    no_ms = {k: v for k, v in pts.items() if k != "MS2"}
    assert measure_all(no_ms).get("ms_length_mm").reason == "needs MS1, MS2; missing: MS2"
    full = measure_all(pts)
    assert full.get("annulus_area_mm2").reason == "no CT given"
    assert full.get("calcium_volume_total_mm3").reason == "no calcification mask given"
    assert full.get("agatston_score").reason == "no CT given"
    names = [m.name for m in full.measurements]
    assert len(names) == len(set(names))
