"""Behaviour of the patient sampler: landmark geometry in the aortic-root frame and coupled variation."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

from cardiofm.constants import LANDMARK_NAMES
from cardiofm.phantoms.anatomy import Anatomy, sample_anatomy

SEEDS = list(range(20))
HINGES = ("RCC", "LCC", "NCC")
N_POPULATION = 300


@cache
def _anatomy(seed: int) -> Anatomy:
    return sample_anatomy(np.random.default_rng(seed))


def _height(a: Anatomy, name: str) -> float:
    """Signed height of a landmark above the annulus plane (along the root normal), mm."""
    return float((a.landmarks[name] - a.root.centre) @ a.root.normal)


def _in_plane(a: Anatomy, name: str) -> np.ndarray:
    """Component of (landmark - root centre) in the annulus plane."""
    v = a.landmarks[name] - a.root.centre
    return v - (v @ a.root.normal) * a.root.normal


def _angle(a: Anatomy, name: str) -> float:
    """Angle of a landmark in the root frame (from e1 towards e2), rad."""
    v = _in_plane(a, name)
    return math.atan2(float(v @ a.root.e2), float(v @ a.root.e1))


def _angular_distance(p: float, q: float) -> float:
    return abs(math.remainder(p - q, 2 * math.pi))


def _circumradius(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> float:
    a, b, c = np.linalg.norm(q - r), np.linalg.norm(p - r), np.linalg.norm(p - q)
    area = 0.5 * np.linalg.norm(np.cross(q - p, r - p))
    return float(a * b * c / (4 * area))


@pytest.fixture(scope="module")
def population() -> list[Anatomy]:
    rng = np.random.default_rng(2024)
    return [sample_anatomy(rng) for _ in range(N_POPULATION)]


# --- determinism ------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_landmarks() -> None:
    first = sample_anatomy(np.random.default_rng(11))
    second = sample_anatomy(np.random.default_rng(11))
    assert list(first.landmarks) == list(LANDMARK_NAMES)
    for name in LANDMARK_NAMES:
        np.testing.assert_array_equal(first.landmarks[name], second.landmarks[name])
    assert (first.calcium_burden, first.age_years, first.sex) == (second.calcium_burden, second.age_years, second.sex)
    assert len(first.nodules) == len(second.nodules)


def test_different_seeds_give_different_landmarks() -> None:
    first = sample_anatomy(np.random.default_rng(11))
    second = sample_anatomy(np.random.default_rng(12))
    for name in LANDMARK_NAMES:
        assert np.linalg.norm(first.landmarks[name] - second.landmarks[name]) > 1e-3, name


def test_annulus_height_parameter_places_root() -> None:
    a = sample_anatomy(np.random.default_rng(3), z_annulus_mm=-123.5)
    assert a.root.centre[2] == pytest.approx(-123.5)
    assert np.isclose(np.mean([a.landmarks[h][2] for h in HINGES]), -123.5, atol=15.0)


# --- geometry of each sampled patient ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_root_frame_is_orthonormal(seed: int) -> None:
    r = _anatomy(seed).root
    frame = np.stack([r.e1, r.e2, r.normal], axis=1)
    np.testing.assert_allclose(frame.T @ frame, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(frame)) == pytest.approx(1.0)
    assert r.normal[2] > 0, "the root normal points from the ventricle up into the aorta"


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_hinges_lie_on_annulus_circle(seed: int) -> None:
    a = _anatomy(seed)
    r = a.root.annulus_radius_mm
    for name in HINGES:
        assert abs(_height(a, name)) < 1e-6, name
        assert np.linalg.norm(a.landmarks[name] - a.root.centre) == pytest.approx(r, rel=1e-9), name
    circ = _circumradius(*(a.landmarks[h] for h in HINGES))
    assert circ == pytest.approx(r, rel=1e-6)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_ostia_above_annulus_on_sinus_wall(seed: int) -> None:
    a = _anatomy(seed)
    for name in ("RCO", "LCO"):
        h = _height(a, name)
        assert 7.0 - 1e-9 <= h <= a.root.stj_height_mm, f"{name} height {h:.2f} mm"
        # the ostium sits on the lumen boundary of the sinus at its own angle and height
        rho = float(np.linalg.norm(_in_plane(a, name)))
        wall = float(a.root.wall_radius(_angle(a, name), h))
        assert rho == pytest.approx(wall, abs=1e-3), name
        assert rho > a.root.annulus_radius_mm, f"{name} must lie in the bulging sinus, outside the annulus radius"


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_septum_points_below_annulus_under_rn_commissure(seed: int) -> None:
    a = _anatomy(seed)
    h1, h2 = _height(a, "MS1"), _height(a, "MS2")
    assert h1 < 0, "MS1 lies in the LVOT, below the annulus plane"
    assert h2 < h1, "MS1 is the upper, MS2 the lower septum point"
    r = a.root.annulus_radius_mm
    for name in ("MS1", "MS2"):
        assert np.linalg.norm(_in_plane(a, name)) == pytest.approx(r, rel=1e-9), name
    # both on one generatrix, between the right and non-coronary cusps (not near the left cusp)
    phi = _angle(a, "MS1")
    assert _angular_distance(phi, _angle(a, "MS2")) < 1e-9
    d_r, d_l, d_n = (_angular_distance(phi, _angle(a, h)) for h in HINGES)
    assert d_r == pytest.approx(d_n, abs=1e-9)
    assert d_l > max(d_r, d_n)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_cusp_orientation_in_patient_space(seed: int) -> None:
    lm = _anatomy(seed).landmarks
    assert lm["LCC"][0] > lm["NCC"][0], "left coronary cusp lies to the patient's left (+x) of the non-coronary"
    most_anterior = min(HINGES, key=lambda h: lm[h][1])
    assert most_anterior == "RCC", "the right coronary cusp is the most anterior (smallest y) hinge"


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_ostia_belong_to_their_cusps(seed: int) -> None:
    lm = _anatomy(seed).landmarks

    def dist(p: str, q: str) -> float:
        return float(np.linalg.norm(lm[p] - lm[q]))

    assert dist("RCO", "RCC") < dist("RCO", "LCC")
    assert dist("RCO", "RCC") < dist("RCO", "NCC")
    assert dist("LCO", "LCC") < dist("LCO", "RCC")
    assert dist("LCO", "LCC") < dist("LCO", "NCC")


# --- coupled variation over a population -------------------------------------------------------------------


def _corr(x: list[float], y: list[float]) -> float:
    return float(np.corrcoef(np.asarray(x), np.asarray(y))[0, 1])


def test_heart_scale_drives_annulus_radius(population: list[Anatomy]) -> None:
    assert _corr([a.heart_scale for a in population], [a.root.annulus_radius_mm for a in population]) > 0.5


def test_annulus_radius_drives_stj_height(population: list[Anatomy]) -> None:
    assert _corr([a.root.annulus_radius_mm for a in population], [a.root.stj_height_mm for a in population]) > 0.5


def test_body_size_drives_heart_scale(population: list[Anatomy]) -> None:
    assert _corr([a.body_half_axes_mm[0] for a in population], [a.heart_scale for a in population]) > 0.3


def test_calcium_burden_rises_with_age(population: list[Anatomy]) -> None:
    by_burden = {b: [a.age_years for a in population if a.calcium_burden == b] for b in ("none", "severe")}
    assert len(by_burden["none"]) >= 10
    assert len(by_burden["severe"]) >= 10
    assert np.mean(by_burden["severe"]) > np.mean(by_burden["none"]) + 3
    # nodule count follows the burden
    counts = {b: [len(a.nodules) for a in population if a.calcium_burden == b] for b in ("none", "severe")}
    assert max(counts["none"]) == 0
    assert min(counts["severe"]) > 0


def test_annulus_tilt_has_plausible_spread(population: list[Anatomy]) -> None:
    tilt = np.degrees([math.acos(float(np.clip(a.root.normal[2], -1, 1))) for a in population])
    assert tilt.std() > 3.0
    assert tilt.min() >= 25.0
    assert tilt.max() <= 70.0
    assert 40.0 < tilt.mean() < 55.0


def test_population_varies_in_size(population: list[Anatomy]) -> None:
    radii = np.array([a.root.annulus_radius_mm for a in population])
    assert radii.std() > 0.5
    assert {a.sex for a in population} == {"M", "F"}
    male = np.mean([a.root.annulus_radius_mm for a in population if a.sex == "M"])
    female = np.mean([a.root.annulus_radius_mm for a in population if a.sex == "F"])
    assert male > female, "men have larger annuli on average"
