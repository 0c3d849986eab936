"""Calcium per cusp sector on synthetic masks with known blobs, HU rules, Agatston on a hand-made volume."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cardiofm.errors import InputDataError
from cardiofm.imaging.geometry import Grid
from cardiofm.measurements.calcium import CalciumUnavailable, agatston_score, calcium_threshold_hu
from cardiofm.measurements.report import AGATSTON_CONTRAST_REASON, measure_all

R = 12.0
#: Hinges in the axial plane z = 0 around the origin: RCC at 0°, LCC at 120°, NCC at -120°; ostia above.
POINTS = {
    "RCC": (R, 0.0, 0.0),
    "LCC": (R * math.cos(math.radians(120)), R * math.sin(math.radians(120)), 0.0),
    "NCC": (R * math.cos(math.radians(-120)), R * math.sin(math.radians(-120)), 0.0),
    "RCO": (12.0, 3.0, 12.0),
    "LCO": (-6.0, 11.0, 13.0),
}
GRID = Grid((81, 81, 81), (1.0, 1.0, 1.0), (-40.0, -40.0, -40.0))
LUMEN_HU = 400.0


def _box(vol: np.ndarray, centre_mm: tuple[float, float, float], size: tuple[int, int, int], value: float) -> None:
    i, j, k = (round(c + 40.0) for c in centre_mm)
    vol[i : i + size[0], j : j + size[1], k : k + size[2]] = value


def _ct_and_mask(*, lvot_blob: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Lumen cylinder of radius 13 mm at 400 HU; calcified blobs (1200 HU) in known places, all in the mask."""
    ijk = np.indices(GRID.shape).reshape(3, -1).T
    xyz = GRID.index_to_lps(ijk).reshape(*GRID.shape, 3)
    hu = np.where(np.hypot(xyz[..., 0], xyz[..., 1]) <= 13.0, LUMEN_HU, 50.0).astype(np.float32)
    mask = np.zeros(GRID.shape, dtype=np.uint8)

    def blob(centre: tuple[float, float, float], size: tuple[int, int, int], value: float = 1200.0) -> None:
        _box(hu, centre, size, value)
        _box(mask, centre, size, 1)

    blob((8.0, 0.0, 2.0), (3, 3, 3))  # RCC sector (angle ~ 7°): 27 mm³
    blob((-4.0, 8.0, 3.0), (2, 2, 2))  # LCC sector (~ 117°): 8 mm³
    blob((-5.0, -8.0, 1.0), (4, 4, 2))  # NCC sector (~ -125°): 32 mm³
    blob((-5.0, 4.0, 6.0), (2, 2, 2), value=450.0)  # LCC sector but below lumen + 100 HU: 8 mm³, dim
    blob((0.0, 0.0, 30.0), (3, 3, 3))  # 30 mm above the plane: not root calcium
    blob((30.0, 5.0, 0.0), (3, 3, 3))  # 30 mm off the axis: not root calcium
    blob((11.0, 2.0, 11.0), (3, 3, 3))  # at the right coronary ostium: not cusp calcium
    if lvot_blob:
        blob((-3.0, -6.0, -6.0), (2, 2, 2))  # 5-6 mm below the plane, NCC sector: LVOT calcium, 8 mm³
    return hu, mask


def _values(report) -> dict[str, float | None]:  # type: ignore[no-untyped-def]
    return {m.name: m.value for m in report.measurements if m.group == "calcium"}


def test_calcium_per_cusp_sector_with_the_lumen_rule() -> None:
    hu, mask = _ct_and_mask()
    report = measure_all(POINTS, (hu, GRID), (mask, GRID))
    v = _values(report)
    assert v["calcium_volume_rcc_mm3"] == 27.0
    assert v["calcium_volume_lcc_mm3"] == 8.0  # the 450-HU blob is below lumen + 100 HU
    assert v["calcium_volume_ncc_mm3"] == 32.0
    assert v["calcium_volume_total_mm3"] == 67.0
    assert v["lvot_calcium_present"] == 0.0
    method = report.get("calcium_volume_rcc_mm3").method or ""
    assert "lumen + 100 = 500 HU" in method
    # the annulus lumen was found: the hard-edged digital 13-mm disk (its area is only defined to about ±1 voxel
    # ring; the sub-voxel accuracy check is the phantom test with partial-volume edges)
    assert report.get("annulus_area_mm2").value == pytest.approx(math.pi * 13.0**2, rel=0.05)
    assert report.get("agatston_score").reason == AGATSTON_CONTRAST_REASON


def test_lvot_calcium_and_the_other_rules() -> None:
    hu, mask = _ct_and_mask(lvot_blob=True)
    v = _values(measure_all(POINTS, (hu, GRID), (mask, GRID)))
    assert v["lvot_calcium_present"] == 1.0
    assert v["calcium_volume_ncc_mm3"] == 40.0
    fixed = measure_all(POINTS, (hu, GRID), (mask, GRID), calcium_rule="fixed-850")
    assert _values(fixed)["calcium_volume_total_mm3"] == 75.0
    assert "850 (fixed threshold)" in (fixed.get("calcium_volume_total_mm3").method or "")
    no_ct = measure_all(POINTS, None, (mask, GRID))
    assert _values(no_ct)["calcium_volume_lcc_mm3"] == 16.0  # every mask voxel counts without a CT
    assert "no CT given" in (no_ct.get("calcium_volume_lcc_mm3").method or "")


def test_threshold_rules() -> None:
    assert calcium_threshold_hu("auto", 380.0, non_contrast=False)[0] == 480.0
    assert calcium_threshold_hu("auto", None, non_contrast=False)[0] == 850.0
    assert calcium_threshold_hu("auto", None, non_contrast=True)[0] == 130.0
    assert calcium_threshold_hu("fixed-850", 380.0, non_contrast=False)[0] == 850.0
    with pytest.raises(CalciumUnavailable, match="lumen"):
        calcium_threshold_hu("lumen-plus-100", None, non_contrast=False)


def test_calcium_without_a_plane_or_with_a_mask_on_another_grid() -> None:
    hu, mask = _ct_and_mask()
    pts = {k: v for k, v in POINTS.items() if k != "LCC"}
    report = measure_all(pts, (hu, GRID), (mask, GRID))
    assert "missing: LCC" in (report.get("calcium_volume_total_mm3").reason or "")
    other = Grid(GRID.shape, (1.0, 1.0, 1.0), (-39.0, -40.0, -40.0))
    with pytest.raises(InputDataError, match="not on the CT's grid"):
        measure_all(POINTS, (hu, GRID), (mask, other))
    with pytest.raises(InputDataError, match="does not match its grid"):
        measure_all(POINTS, (hu[:-1], GRID), None)


AXIAL = Grid((40, 40, 4), (0.5, 0.5, 3.0), (-10.0, -10.0, -4.5))


def _agatston_volume() -> np.ndarray:
    """Hand-made non-contrast slices with a known score of 8 + 6 + 75 = 89."""
    hu = np.full(AXIAL.shape, 40.0, dtype=np.float32)
    hu[2:6, 2:6, 1] = 250.0  # 16 px = 4 mm², peak 250 -> weight 2: 8
    hu[10:13, 10:12, 1] = 450.0  # 6 px = 1.5 mm², peak 450 -> weight 4: 6
    hu[20:21, 20:23, 1] = 900.0  # 3 px = 0.75 mm² < 1 mm²: not a lesion
    hu[25:35, 25:35, 2] = 150.0  # 100 px = 25 mm², ...
    hu[30, 30, 2] = 350.0  # ... peak 350 -> weight 3: 75
    hu[5:9, 30:34, 3] = 129.0  # below 130 HU: nothing
    return hu


def test_agatston_on_a_hand_made_volume() -> None:
    hu = _agatston_volume()
    assert agatston_score(hu, AXIAL) == pytest.approx(89.0)
    region = np.ones(AXIAL.shape, dtype=bool)
    region[10:13, 10:12, 1] = False
    assert agatston_score(hu, AXIAL, region) == pytest.approx(83.0)
    thin = Grid(AXIAL.shape, (0.5, 0.5, 1.5), AXIAL.origin_lps_mm)
    assert agatston_score(hu, thin) == pytest.approx(89.0 * 1.5 / 3.0)
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    oblique = Grid(AXIAL.shape, AXIAL.spacing_mm, AXIAL.origin_lps_mm, ((1.0, 0.0, 0.0), (0.0, c, -s), (0.0, s, c)))
    with pytest.raises(CalciumUnavailable, match="axial"):
        agatston_score(hu, oblique)


def test_agatston_in_the_report_only_for_a_non_contrast_series() -> None:
    grid = Grid((60, 60, 12), (0.5, 0.5, 3.0), (-15.0, -15.0, -16.5))
    hu = np.full(grid.shape, 40.0, dtype=np.float32)
    mask = np.zeros(grid.shape, dtype=np.uint8)
    hu[40:44, 30:34, 6] = 420.0  # at x = 5..6.5 mm, y = 0..1.5 mm, z = 1.5 mm: RCC sector, 4 mm², weight 4
    mask[40:44, 30:34, 6] = 1
    pts = {k: (v[0] * 0.5, v[1] * 0.5, v[2]) for k, v in POINTS.items() if k in ("RCC", "LCC", "NCC")}
    native = measure_all(pts, (hu, grid), (mask, grid), non_contrast=True)
    assert native.get("agatston_score").value == pytest.approx(16.0)
    assert native.get("calcium_volume_rcc_mm3").value == pytest.approx(16 * 0.25 * 3.0)
    assert "130" in (native.get("calcium_volume_rcc_mm3").method or "")
    assert "not contrast-enhanced" in (native.get("annulus_area_mm2").reason or "")
    contrast = measure_all(pts, (hu, grid), (mask, grid), non_contrast=False)
    agatston = contrast.get("agatston_score")
    assert not agatston.available
    assert agatston.reason == "Agatston needs a non-contrast calcium-scoring series; this CT is contrast-enhanced"
