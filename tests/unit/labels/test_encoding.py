"""Tests of landmark encoding (spheres, Gaussian heatmaps) and decoding back to world points."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from cardiofm.constants import TASK_LANDMARKS
from cardiofm.errors import LabelError
from cardiofm.imaging.geometry import Grid, as_direction
from cardiofm.labels.encoding import (
    DecodeMethod,
    EncodingKind,
    LandmarkEncoding,
    decode_landmarks,
    encode_heatmaps,
    encode_landmarks,
    encode_spheres,
)

NAMES = TASK_LANDMARKS["landmarks"]  # RCC LCC NCC RCO LCO


def _rotation(z_deg: float, x_deg: float) -> npt.NDArray[np.float64]:
    a, b = math.radians(z_deg), math.radians(x_deg)
    rz = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(b), -math.sin(b)], [0.0, math.sin(b), math.cos(b)]])
    rotation: npt.NDArray[np.float64] = rz @ rx
    return rotation


GRIDS = {
    "identity": Grid((48, 48, 48), (1.0, 1.0, 1.0), (-20.0, 10.0, 100.0)),
    "oblique": Grid((48, 48, 48), (1.0, 1.0, 1.0), (5.0, -3.0, 40.0), as_direction(_rotation(30.0, 10.0))),
    "anisotropic": Grid((64, 60, 20), (0.7, 0.8, 2.5), (0.0, 0.0, 0.0)),
    "flipped": Grid((48, 48, 40), (0.9, 0.9, 1.25), (30.0, -20.0, 50.0), as_direction(np.diag([-1.0, 1.0, -1.0]))),
}


def _centre_lps(grid: Grid) -> npt.NDArray[np.float64]:
    return grid.index_to_lps((np.asarray(grid.shape, dtype=np.float64) - 1.0) / 2.0)


def _points(grid: Grid, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Four well separated off-lattice points around the grid centre (NCC deliberately missing)."""
    rng = np.random.default_rng(seed)
    offsets = np.array([[-10.0, 0.0, 5.0], [10.0, 5.0, -5.0], [3.0, 10.0, 10.0], [0.0, -10.0, -2.0]])
    offsets += rng.uniform(-0.5, 0.5, offsets.shape)
    pts = _centre_lps(grid) + offsets
    return {
        name: (float(p[0]), float(p[1]), float(p[2])) for name, p in zip(("RCC", "LCC", "RCO", "LCO"), pts, strict=True)
    }


def _one_hot(labels: npt.NDArray[np.generic], n_channels: int) -> npt.NDArray[np.float32]:
    return np.moveaxis(np.eye(n_channels, dtype=np.float32)[labels.astype(np.intp)], -1, 0)


def _as_probs(encoded: npt.NDArray[np.generic], kind: EncodingKind) -> npt.NDArray[np.float32]:
    if kind == "sphere":
        return _one_hot(encoded.astype(np.uint8), len(NAMES) + 1)
    return encoded.astype(np.float32)


def _error_mm(grid: Grid, decoded: tuple[float, float, float], truth: tuple[float, float, float]) -> float:
    return float(np.linalg.norm(np.subtract(decoded, truth)))


@pytest.mark.parametrize("method", ["largest_component", "weighted"])
@pytest.mark.parametrize("kind", ["sphere", "gaussian"])
@pytest.mark.parametrize("grid_name", list(GRIDS))
def test_round_trip_within_a_tenth_of_a_voxel(grid_name: str, kind: EncodingKind, method: DecodeMethod) -> None:
    grid = GRIDS[grid_name]
    enc = LandmarkEncoding(kind)
    points = _points(grid)
    decoded = decode_landmarks(
        _as_probs(encode_landmarks(points, NAMES, grid, enc), kind), NAMES, grid, method, enc=enc
    )
    assert set(decoded) == set(points)  # NCC absent: omitted, nothing shifted
    tol_mm = 0.1 * max(grid.spacing_mm)
    for name, truth in points.items():
        assert _error_mm(grid, decoded[name].lps_mm, truth) <= tol_mm, name
        # Heatmap confidence is the sampled peak: below 1 when the point falls between 2.5 mm slices.
        assert decoded[name].confidence > (0.9 if kind == "sphere" else 0.75)


@pytest.mark.parametrize("grid_name", ["oblique", "anisotropic"])
def test_spheres_are_measured_in_world_mm(grid_name: str) -> None:
    grid = GRIDS[grid_name]
    point = _points(grid)["RCC"]
    labels = encode_landmarks({"RCC": point}, NAMES, grid)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), axis=-1)
    dist_mm = np.linalg.norm(grid.index_to_lps(ijk) - np.asarray(point), axis=-1)
    np.testing.assert_array_equal(labels == 1, dist_mm <= 4.0)
    assert set(np.unique(labels)) == {0, 1}


def test_sphere_volume_matches_four_thirds_pi_r_cubed() -> None:
    for grid in (GRIDS["identity"], GRIDS["anisotropic"]):
        labels = encode_landmarks({"RCC": tuple(_centre_lps(grid) + 0.3)}, NAMES, grid)
        volume_mm3 = np.count_nonzero(labels) * float(np.prod(grid.spacing_mm))
        assert volume_mm3 == pytest.approx(4.0 / 3.0 * math.pi * 4.0**3, rel=0.10)


def test_overlapping_spheres_give_each_voxel_to_the_nearer_point() -> None:
    grid = GRIDS["identity"]
    c = _centre_lps(grid) + 0.2
    points = {"RCC": tuple(c), "LCC": tuple(c + np.array([3.0, 4.0, 0.0]))}  # 5 mm apart, radius 4 mm
    labels = encode_landmarks(points, NAMES, grid)
    reversed_labels = encode_landmarks(points, tuple(reversed(NAMES)), grid)
    ijk = np.argwhere(labels > 0)
    world = grid.index_to_lps(ijk)
    d_rcc = np.linalg.norm(world - np.asarray(points["RCC"]), axis=1)
    d_lcc = np.linalg.norm(world - np.asarray(points["LCC"]), axis=1)
    expected = np.where(d_rcc < d_lcc, 1, 2)
    np.testing.assert_array_equal(labels[tuple(ijk.T)], expected)
    assert np.count_nonzero(labels == 1) > 100
    assert np.count_nonzero(labels == 2) > 100
    # Drawing order does not matter: the same voxels carry the same landmark with the names reversed.
    rcc_rev, lcc_rev = len(NAMES), len(NAMES) - 1
    np.testing.assert_array_equal(labels == 1, reversed_labels == rcc_rev)
    np.testing.assert_array_equal(labels == 2, reversed_labels == lcc_rev)


@pytest.mark.parametrize("method", ["largest_component", "weighted"])
def test_partial_sphere_at_the_border_still_decodes(method: DecodeMethod) -> None:
    grid = GRIDS["identity"]
    # 2.5 voxels from the i = 0 face: the sphere loses a 1.5 mm cap.
    point = tuple(grid.index_to_lps([2.0, 20.4, 30.3]))
    labels = encode_landmarks({"LCO": point}, NAMES, grid)
    assert labels[0].any()
    assert not labels[-10:].any()  # no negative-index wrap to the far side
    probs = _one_hot(labels, len(NAMES) + 1)
    plain = decode_landmarks(probs, NAMES, grid, method, refine=False)["LCO"]
    assert _error_mm(grid, plain.lps_mm, point) <= 0.5
    refined = decode_landmarks(probs, NAMES, grid, method)["LCO"]
    assert _error_mm(grid, refined.lps_mm, point) <= 0.1
    assert refined.confidence < 1.0  # a truncated sphere is partial evidence


@pytest.mark.parametrize("method", ["largest_component", "weighted"])
def test_refinement_corrects_a_sphere_cut_by_two_faces(method: DecodeMethod) -> None:
    grid = GRIDS["identity"]
    point = tuple(grid.index_to_lps([1.3, 20.4, 46.2]))  # 1.8 and 1.3 voxels inside the i = 0 and k = 47 faces
    probs = _one_hot(encode_landmarks({"LCO": point}, NAMES, grid), len(NAMES) + 1)
    plain = decode_landmarks(probs, NAMES, grid, method, refine=False)["LCO"]
    refined = decode_landmarks(probs, NAMES, grid, method)["LCO"]
    assert _error_mm(grid, plain.lps_mm, point) > 0.5  # the plain centroid is pulled inwards
    assert _error_mm(grid, refined.lps_mm, point) <= 0.1


def test_points_outside_the_grid_write_partially_or_not_at_all() -> None:
    grid = GRIDS["identity"]
    just_outside = tuple(grid.index_to_lps([-2.0, 10.0, 10.0]))
    far_outside = tuple(grid.index_to_lps([-10.0, 10.0, 10.0]))
    labels = encode_landmarks({"RCC": just_outside, "LCC": far_outside}, NAMES, grid)
    assert set(np.unique(labels)) == {0, 1}
    assert labels[:3].any()  # reaches i = 2 (exactly 4 mm away)
    assert not labels[3:].any()
    heat = encode_landmarks({"RCC": far_outside}, NAMES, grid, LandmarkEncoding("gaussian", sigma_mm=1.0))
    assert not heat.any()


def test_gaussian_heatmaps_have_world_sigma_and_empty_missing_channels() -> None:
    grid = GRIDS["anisotropic"]
    enc = LandmarkEncoding("gaussian")
    assert enc.effective_sigma_mm == 2.0
    point = tuple(grid.index_to_lps([30.0, 30.0, 10.0]))  # on a voxel centre
    heat = encode_landmarks({"RCC": point, "MS1": point}, NAMES, grid, enc)
    assert heat.dtype == np.float32
    assert heat.shape == (len(NAMES), *grid.shape)
    assert heat[0, 30, 30, 10] == pytest.approx(1.0)
    assert heat[0, 30, 30, 11] == pytest.approx(math.exp(-(2.5**2) / 8.0), rel=1e-5)
    assert heat[0, 40, 30, 10] == pytest.approx(math.exp(-(7.0**2) / 8.0), rel=1e-5)
    assert not heat[1:].any()  # missing names (and the unrelated MS1) leave their channels empty


@pytest.mark.parametrize("method", ["largest_component", "weighted"])
def test_spurious_smaller_blob_of_the_same_class_is_ignored(method: DecodeMethod) -> None:
    grid = GRIDS["identity"]
    points = _points(grid)
    labels = encode_landmarks(points, NAMES, grid)
    labels[2:6, 2:6, 2:6] = 1  # a 64-voxel RCC blob far from every landmark
    probs = _one_hot(labels, len(NAMES) + 1)
    decoded = decode_landmarks(probs, NAMES, grid, method)
    assert _error_mm(grid, decoded["RCC"].lps_mm, points["RCC"]) <= 0.1


@pytest.mark.parametrize("method", ["largest_component", "weighted"])
def test_a_larger_but_less_certain_false_blob_loses_to_the_confident_structure(method: DecodeMethod) -> None:
    grid = GRIDS["identity"]
    points = _points(grid)
    labels = encode_landmarks(points, NAMES, grid)
    rcc = labels == 1
    stray = np.zeros_like(rcc)
    stray[1:8, 1:8, 1:8] = True  # 343 voxels far from every landmark: more than the RCC sphere (~268)
    assert stray.sum() > rcc.sum()
    labels[stray] = 1
    probs = _one_hot(labels, len(NAMES) + 1)
    for voxels, p_rcc in ((rcc, 0.95), (stray, 0.55)):  # the stray blob is RCC by argmax, but barely
        probs[1][voxels], probs[0][voxels] = p_rcc, 1.0 - p_rcc
    by_mass = decode_landmarks(probs, NAMES, grid, method)
    assert _error_mm(grid, by_mass["RCC"].lps_mm, points["RCC"]) <= 0.1
    # the reference work's rule (most voxels) takes the false blob
    by_voxels = decode_landmarks(probs, NAMES, grid, method, component="voxels")
    assert _error_mm(grid, by_voxels["RCC"].lps_mm, points["RCC"]) > 20.0


def test_soft_probabilities_decode_with_weighted_centroid() -> None:
    grid = GRIDS["oblique"]
    points = _points(grid, seed=3)
    heat = encode_landmarks(points, NAMES, grid, LandmarkEncoding("gaussian"))
    background = np.clip(1.0 - heat.sum(axis=0, keepdims=True), 0.0, 1.0)
    probs = np.concatenate([background, heat], axis=0)
    probs /= probs.sum(axis=0, keepdims=True)
    decoded = decode_landmarks(probs, NAMES, grid, "weighted", refine=False)
    assert set(decoded) == set(points)
    for name, truth in points.items():
        assert _error_mm(grid, decoded[name].lps_mm, truth) <= 0.1


def test_typed_shortcuts_match_encode_landmarks() -> None:
    grid = GRIDS["flipped"]
    points = _points(grid)
    np.testing.assert_array_equal(
        encode_spheres(points, NAMES, grid, 3.0), encode_landmarks(points, NAMES, grid, LandmarkEncoding(radius_mm=3.0))
    )
    np.testing.assert_array_equal(
        encode_heatmaps(points, NAMES, grid, 1.5),
        encode_landmarks(points, NAMES, grid, LandmarkEncoding("gaussian", sigma_mm=1.5)),
    )


def test_classes_not_found_are_omitted() -> None:
    grid = Grid((16, 16, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    probs = np.zeros((len(NAMES) + 1, *grid.shape), dtype=np.float32)
    probs[0] = 1.0
    assert decode_landmarks(probs, NAMES, grid) == {}
    assert decode_landmarks(probs, NAMES, grid, "weighted") == {}


def test_invalid_inputs_raise() -> None:
    grid = Grid((16, 16, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    with pytest.raises(LabelError):
        encode_landmarks({"RCC": (0.0, math.nan, 0.0)}, NAMES, grid)
    with pytest.raises(ValueError, match="unique"):
        encode_landmarks({}, ["RCC", "RCC"], grid)
    with pytest.raises(ValueError, match="radius"):
        LandmarkEncoding(radius_mm=0.0)
    with pytest.raises(ValueError, match="channels"):
        decode_landmarks(np.zeros((3, 16, 16, 16)), NAMES, grid)
    with pytest.raises(ValueError, match="shape"):
        decode_landmarks(np.zeros((6, 16, 16, 15)), NAMES, grid)
    with pytest.raises(ValueError, match="non-finite"):
        decode_landmarks(np.full((6, 16, 16, 16), np.nan), NAMES, grid)
    with pytest.raises(ValueError, match="component"):
        decode_landmarks(np.zeros((6, 16, 16, 16)), NAMES, grid, component="size")  # type: ignore[arg-type]
