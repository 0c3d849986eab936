"""Behaviour of the renderer: what lies around each landmark, label semantics, contrast, noise and FOV."""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt
import pytest

from cardiofm.constants import HEART_LABELS, HU_AIR, HU_CALCIUM_THRESHOLD, HU_MIN_STORED
from cardiofm.imaging.geometry import Grid
from cardiofm.phantoms.anatomy import Anatomy, sample_anatomy
from cardiofm.phantoms.render import Contrast, Rendered, render

LEVEL_HU = 380.0
CONTRAST = Contrast.enhanced_scan(LEVEL_HU, "optimal")
SEEDS = (0, 3, 9, 14)
FINE_MM = 0.3
FINE_N = 25  # ±3.6 mm around the landmark
LAB = HEART_LABELS


def _grid(centre: npt.ArrayLike, i_axis: npt.ArrayLike, j_axis: npt.ArrayLike, n: int, spacing: float) -> Grid:
    """Cubic grid of n³ voxels whose centre voxel lies exactly at ``centre``."""
    di = np.asarray(i_axis, dtype=np.float64)
    dj = np.asarray(j_axis, dtype=np.float64)
    di, dj = di / np.linalg.norm(di), dj / np.linalg.norm(dj)
    direction = np.stack([di, dj, np.cross(di, dj)], axis=1)
    origin = np.asarray(centre, dtype=np.float64) - direction @ np.full(3, spacing * (n - 1) / 2)
    return Grid(
        shape=(n, n, n),
        spacing_mm=(spacing, spacing, spacing),
        origin_lps_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=tuple(tuple(float(v) for v in row) for row in direction),
    )


def _voxel_lps(grid: Grid) -> npt.NDArray[np.float64]:
    return grid.index_to_lps(np.indices(grid.shape).reshape(3, -1).T).reshape((*grid.shape, 3))


@cache
def _anatomy(seed: int) -> Anatomy:
    return sample_anatomy(np.random.default_rng(seed))


def _seed_with_burden(burden: str) -> int:
    for seed in range(500):
        if _anatomy(seed).calcium_burden == burden:
            return seed
    raise AssertionError(f"no {burden!r} patient among 500 seeds")


def _landmark_angle(a: Anatomy, name: str) -> float:
    r = a.root
    return {
        "RCC": r.cusp_angles[0],
        "RCO": r.cusp_angles[0],
        "LCC": r.cusp_angles[1],
        "LCO": r.cusp_angles[1],
        "NCC": r.cusp_angles[2],
    }.get(name, a.ms_angle)


@cache
def _fine(seed: int, name: str) -> tuple[Grid, Rendered, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """0.3 mm oblique render through the root frame around one landmark: grid, output, distance, height maps."""
    a = _anatomy(seed)
    p = a.landmarks[name]
    grid = _grid(p, a.root.direction(_landmark_angle(a, name)), -a.root.normal, FINE_N, FINE_MM)
    out = render(a, grid, CONTRAST, 0.0, np.random.default_rng(0), with_labels=True)
    xyz = _voxel_lps(grid)
    dist = np.linalg.norm(xyz - p, axis=-1)
    height = (xyz - a.root.centre) @ a.root.normal
    return grid, out, dist, height


@cache
def _root_render(seed: int) -> tuple[Grid, Rendered]:
    """1 mm axial render with labels around the aortic root."""
    a = _anatomy(seed)
    grid = _grid(a.root.centre + 6.0 * a.root.normal, (1, 0, 0), (0, 1, 0), 60, 1.0)
    return grid, render(a, grid, CONTRAST, 0.0, np.random.default_rng(0), with_labels=True)


def _cases(names: tuple[str, ...]) -> list[object]:
    return [pytest.param(seed, name, id=f"seed{seed}-{name}") for seed in SEEDS for name in names]


# --- structure around the landmarks ------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "name"), _cases(("RCC", "LCC", "NCC")))
def test_hinge_between_blood_and_tissue(seed: int, name: str) -> None:
    _, out, dist, _ = _fine(seed, name)
    near = dist <= 1.2
    assert out.hu[near].max() > 200.0, "contrast blood within 1.2 mm of the hinge"
    assert out.hu[near].min() < 150.0, "wall/leaflet tissue within 1.2 mm of the hinge"
    assert out.heart is not None
    labels = set(np.unique(out.heart[near]).tolist())
    assert {LAB["left_ventricle"], LAB["aorta"]} <= labels, f"hinge joins LVOT and aortic root, got {labels}"


@pytest.mark.parametrize(("seed", "name"), _cases(("RCO", "LCO")))
def test_ostium_joins_sinus_lumen_wall_and_coronary(seed: int, name: str) -> None:
    _, out, dist, _ = _fine(seed, name)
    assert out.coronaries is not None
    assert out.hu[dist <= 1.0].max() > 200.0, "blood within 1 mm of the ostium"
    assert out.coronaries[dist <= 1.0].any(), "the coronary lumen starts at the ostium"
    near = dist <= 3.0
    sinus_blood = np.abs(out.hu - LEVEL_HU) < 1.0  # coronary lumen is 0.92 × level, sinus blood the full level
    assert sinus_blood[near].any(), "aortic sinus lumen within 3 mm of the ostium"
    assert (out.hu[near] < 150.0).any(), "sinus wall within 3 mm of the ostium"


@pytest.mark.parametrize(("seed", "name"), _cases(("RCO", "LCO")))
def test_coronary_leaves_the_ostium_outward(seed: int, name: str) -> None:
    a = _anatomy(seed)
    grid, out = _root_render(seed)
    assert out.coronaries is not None
    p = a.landmarks[name]
    xyz = _voxel_lps(grid)
    mask = out.coronaries.astype(bool)
    assert (np.linalg.norm(xyz[mask] - p, axis=-1) <= 3.0).any(), "coronary mask reaches the ostium"
    v = p - a.root.centre
    outward = v - (v @ a.root.normal) * a.root.normal
    outward /= np.linalg.norm(outward)

    def at(point: npt.NDArray[np.float64]) -> tuple[int, int, int]:
        i, j, k = np.rint(grid.lps_to_index(point)).astype(int)
        return int(i), int(j), int(k)

    outside, inside = at(p + 6.0 * outward), at(p - 6.0 * outward)
    assert out.coronaries[outside] == 1, "coronary lumen continues away from the root"
    assert out.hu[outside] > 200.0
    assert out.coronaries[inside] == 0, "no coronary inside the aortic sinus"


@pytest.mark.parametrize(("seed", "name"), _cases(("MS1", "MS2")))
def test_septum_points_bound_the_membranous_window(seed: int, name: str) -> None:
    _, out, dist, height = _fine(seed, name)
    assert out.heart is not None
    assert (out.hu[dist <= 1.5] > 0.8 * LEVEL_HU).any(), "LVOT (left-heart) blood within 1.5 mm"
    assert (out.heart[dist <= 1.5] == LAB["left_ventricle"]).any()
    # beyond the thin septum lies the right heart (right-heart contrast level)
    ra = (out.heart == LAB["right_atrium"]) & (dist <= 3.0)
    assert ra.any(), "right-atrial side of the membranous septum within 3 mm"
    assert (np.abs(out.hu[ra] - CONTRAST.right_heart_hu) < 1.0).any(), "pure right-heart blood behind the septum"
    h = float(height[FINE_N // 2, FINE_N // 2, FINE_N // 2])
    if name == "MS1":
        assert height[ra].max() <= h + 0.05, "MS1 is the upper border of the septum window"
    else:
        assert height[ra].min() >= h - 0.05, "MS2 is the lower border of the septum window"


# --- label maps ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("burden", ["none", "severe"])
def test_calcification_mask_follows_burden(burden: str) -> None:
    seed = _seed_with_burden(burden)
    a = _anatomy(seed)
    grid, out = _root_render(seed)
    assert out.calcification is not None
    calc = out.calcification.astype(bool)
    if burden == "none":
        assert not calc.any()
        return
    assert calc.sum() >= 5
    assert np.median(out.hu[calc]) >= HU_CALCIUM_THRESHOLD
    # calcium sits on the valve: near the annulus, below the commissures, inside the sinus wall
    xyz = _voxel_lps(grid)[calc]
    rel = xyz - a.root.centre
    h = rel @ a.root.normal
    rho = np.linalg.norm(rel - h[:, None] * a.root.normal, axis=-1)
    assert h.min() > -4.0
    assert h.max() < a.root.commissure_height_mm + 4.0
    assert rho.max() < a.root.annulus_radius_mm + max(a.root.sinus_bulge_mm) + 4.0


def test_heart_label_map_complete_and_consistent_with_hu() -> None:
    a = _anatomy(0)
    grid = _grid(a.heart_centre, (1, 0, 0), (0, 1, 0), 110, 1.5)
    out = render(a, grid, CONTRAST, 0.0, np.random.default_rng(0), with_labels=True)
    assert out.heart is not None
    assert set(np.unique(out.heart).tolist()) == {0, *LAB.values()}
    expected = {
        "myocardium": CONTRAST.myocardium_hu,
        "left_atrium": 0.96 * LEVEL_HU,
        "left_ventricle": LEVEL_HU,
        "right_atrium": CONTRAST.right_heart_hu,
        "right_ventricle": CONTRAST.right_heart_hu,
        "aorta": LEVEL_HU,
        "pulmonary_artery": CONTRAST.right_heart_hu,
    }
    for name, hu in expected.items():
        median = float(np.median(out.hu[out.heart == LAB[name]]))
        assert median == pytest.approx(hu, abs=10.0), f"{name}: median {median:.0f} HU, expected {hu:.0f}"
    # the landmarks of the root lie inside the labelled heart
    for name, p in a.landmarks.items():
        i, j, k = np.rint(grid.lps_to_index(p)).astype(int)
        assert out.heart[i, j, k] != 0, name


def test_non_contrast_blood_is_near_water() -> None:
    a = _anatomy(3)
    grid = _grid(a.root.centre + 8.0 * a.root.normal, (1, 0, 0), (0, 1, 0), 40, 1.0)
    native = render(a, grid, Contrast.non_contrast(), 0.0, np.random.default_rng(0), with_labels=True)
    enhanced = render(a, grid, CONTRAST, 0.0, np.random.default_rng(0), with_labels=True)
    assert native.heart is not None
    np.testing.assert_array_equal(native.heart, enhanced.heart)
    for label in ("aorta", "left_ventricle"):
        mask = native.heart == LAB[label]
        assert mask.sum() > 100, label
        assert abs(float(np.median(native.hu[mask])) - 40.0) < 60.0, label
        assert float(np.median(enhanced.hu[mask])) > 300.0, label


# --- noise and reconstruction circle ---------------------------------------------------------------------------


@pytest.mark.parametrize("noise_hu", [12.0, 30.0], ids=lambda n: f"noise{n:g}")
def test_noise_std_matches_noise_hu(noise_hu: float) -> None:
    a = _anatomy(0)
    far = np.array([a.body_centre[0] + 450.0, a.body_centre[1] - 300.0, 0.0])  # air only, away from body and table
    grid = _grid(far, (1, 0, 0), (0, 1, 0), 30, 1.0)
    clean = render(a, grid, CONTRAST, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(clean.hu, np.float32(HU_AIR))
    noisy = render(a, grid, CONTRAST, noise_hu, np.random.default_rng(5)).hu
    assert float(noisy.std()) == pytest.approx(noise_hu, rel=0.05)
    assert float(noisy.mean()) == pytest.approx(HU_AIR, abs=1.0)
    x = noisy - noisy.mean()
    lag1 = float((x[1:] * x[:-1]).mean() / x.var())
    assert abs(lag1) < 0.05, "noise is white"
    again = render(a, grid, CONTRAST, noise_hu, np.random.default_rng(5)).hu
    np.testing.assert_array_equal(noisy, again)


@pytest.mark.parametrize("noise_hu", [0.0, 20.0], ids=lambda n: f"noise{n:g}")
def test_fov_circle_pads_outside(noise_hu: float) -> None:
    a = _anatomy(0)
    n, spacing, fov = 64, 4.0, 200.0
    grid = _grid(a.heart_centre, (1, 0, 0), (0, 1, 0), n, spacing)
    hu = render(a, grid, CONTRAST, noise_hu, np.random.default_rng(1), fov_mm=fov).hu
    for i, j in ((0, 0), (0, n - 1), (n - 1, 0), (n - 1, n - 1)):
        assert (hu[i, j, :] == HU_MIN_STORED).all()
    c = (np.arange(n) - (n - 1) / 2) * spacing
    radius = np.hypot(c[:, None], c[None, :])
    padded = (hu == HU_MIN_STORED).all(axis=2)
    assert padded[radius > fov / 2 + spacing].all()
    assert not (hu[radius < fov / 2 - spacing] == HU_MIN_STORED).any()
    # the body is inside the circle
    assert (hu[radius < fov / 2 - spacing] > -500).mean() > 0.3
