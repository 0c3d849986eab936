"""Heart crop: fallback segmentation on phantoms, crop geometry, resampling fill values and errors."""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from cardiofm.constants import HU_MIN_STORED
from cardiofm.errors import InputDataError
from cardiofm.imaging.crop import EMPTY_MASK_MESSAGE, CropResult, crop_heart
from cardiofm.imaging.geometry import Grid, as_direction, as_point
from cardiofm.imaging.heart_fallback import segment_heart_fallback
from cardiofm.imaging.resample import resample_to_spacing, world_bbox_of_mask
from cardiofm.phantoms.anatomy import Anatomy, sample_anatomy
from cardiofm.phantoms.render import Contrast, Rendered, render

DIRECTIONS: dict[str, npt.NDArray[np.float64]] = {
    "identity": np.eye(3),
    "ffs": np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    "reversed-k": np.diag([1.0, 1.0, -1.0]),
}
SEEDS = (0, 1, 2, 3, 4, 5)
TIMINGS = ("optimal", "early")
LEVELS_HU = (420.0, 360.0, 390.0, 340.0)
SHAPE = (96, 96, 60)
SPACING_MM = (2.0, 2.0, 2.5)
MARGIN_MM = 20.0


def _direction_name(seed: int) -> str:
    return list(DIRECTIONS)[seed % len(DIRECTIONS)]


@cache
def _anatomy(seed: int) -> Anatomy:
    return sample_anatomy(np.random.default_rng(seed))


def _grid(a: Anatomy, direction: str, shape: tuple[int, int, int] = SHAPE) -> Grid:
    """Axial grid centred like a cardiac reconstruction (heart centre in-plane, 35 mm below the annulus)."""
    centre = np.array([a.heart_centre[0], a.heart_centre[1], a.root.centre[2] - 35.0])
    d = DIRECTIONS[direction]
    origin = centre - d @ ((np.asarray(shape) - 1) / 2 * np.asarray(SPACING_MM))
    return Grid(shape=shape, spacing_mm=SPACING_MM, origin_lps_mm=as_point(origin), direction=as_direction(d))


@cache
def _case(seed: int, timing: str) -> tuple[Anatomy, Grid, Rendered, npt.NDArray[np.uint8]]:
    a = _anatomy(seed)
    grid = _grid(a, _direction_name(seed))
    contrast = Contrast.enhanced_scan(LEVELS_HU[seed % len(LEVELS_HU)], timing)
    out = render(a, grid, contrast, 22.0, np.random.default_rng(seed), with_labels=True, fov_mm=190.0)
    return a, grid, out, segment_heart_fallback(out.hu, grid)


def _landmarks(a: Anatomy) -> npt.NDArray[np.float64]:
    return np.stack(list(a.landmarks.values()))


@pytest.mark.parametrize("timing", TIMINGS)
@pytest.mark.parametrize("seed", SEEDS)
def test_fallback_mask_overlaps_heart_and_crop_holds_landmarks(seed: int, timing: str) -> None:
    a, grid, out, mask = _case(seed, timing)
    assert out.heart is not None
    truth = (out.heart >= 1) & (out.heart <= 5)
    found = mask.astype(bool)
    dice = 2 * np.count_nonzero(found & truth) / (np.count_nonzero(found) + np.count_nonzero(truth))
    assert dice > 0.6
    crop = crop_heart(out.hu, grid, mask, margin_mm=MARGIN_MM)
    lo, hi = np.asarray(crop.bbox_lps_mm[0]), np.asarray(crop.bbox_lps_mm[1])
    points = _landmarks(a)
    spare_mm = np.minimum(points - lo, hi - points)
    assert spare_mm.min() >= 5.0, spare_mm


@pytest.mark.parametrize("timing", TIMINGS)
@pytest.mark.parametrize("seed", SEEDS)
def test_fallback_mask_excludes_spine(seed: int, timing: str) -> None:
    a, grid, out, mask = _case(seed, timing)
    assert out.heart is not None
    inner_y = a.body_half_axes_mm[1] - a.fat_thickness_mm * 0.8
    spine_xy = a.body_centre[:2] + np.array([0.0, 0.6 * inner_y])
    xyz = grid.index_to_lps(np.indices(grid.shape).reshape(3, -1).T)
    dx, dy = (xyz[:, 0] - spine_xy[0]) / 18.0, (xyz[:, 1] - spine_xy[1]) / 16.0
    body = dx**2 + dy**2 <= 1.0
    arch = dx**2 * (18.0 / 15.0) ** 2 + ((xyz[:, 1] - spine_xy[1] - 24.0) / 13.0) ** 2 <= 1.0
    # rendered bone of the vertebrae (the phantom's heart may paint over the vertebral body's front)
    bone = (body | arch) & (out.hu.reshape(-1) > 200.0) & (out.heart.reshape(-1) == 0)
    assert bone.sum() > 1000
    assert not mask.reshape(-1)[bone].any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_values_and_geometry_match_original(seed: int) -> None:
    a, grid, out, mask = _case(seed, "optimal")
    crop = crop_heart(out.hu, grid, mask, margin_mm=MARGIN_MM, spacing_mm=1.0)
    assert crop.grid.spacing_mm == (1.0, 1.0, 1.0)
    assert np.allclose(crop.grid.direction_matrix, grid.direction_matrix)
    assert crop.image.dtype == np.float32
    assert crop.mask.dtype == np.uint8
    for p in _landmarks(a):
        # round trip LPS -> crop index -> LPS is exact, and the landmark is well inside the crop
        idx = crop.grid.lps_to_index(p)
        np.testing.assert_allclose(crop.grid.index_to_lps(idx), p, atol=1e-9)
        assert crop.grid.contains_index(idx, margin=5.0)
        # the crop voxel nearest the landmark holds the original's trilinear value at its centre
        v = np.rint(idx).astype(int)
        centre_in_original = grid.lps_to_index(crop.grid.index_to_lps(v))
        expected = ndimage.map_coordinates(out.hu, centre_in_original[:, None], order=1)[0]
        assert crop.image[tuple(v)] == pytest.approx(expected, abs=1e-2)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_crop_of_linear_field_is_exact_at_landmarks(direction: str) -> None:
    """Trilinear interpolation reproduces a linear HU field exactly: any geometry slip shows up."""
    a = _anatomy(3)
    grid = _grid(a, direction, shape=(64, 64, 60))
    xyz = grid.index_to_lps(np.indices(grid.shape).reshape(3, -1).T)
    coef = np.array([1.5, -2.0, 3.0])
    hu = (xyz @ coef).reshape(grid.shape).astype(np.float32)
    mask = np.zeros(grid.shape, dtype=np.uint8)
    lm_idx = np.rint(grid.lps_to_index(_landmarks(a))).astype(int)
    mask[tuple(lm_idx.T)] = 1
    crop = crop_heart(hu, grid, mask, margin_mm=10.0, spacing_mm=1.0)
    for p in _landmarks(a):
        idx = crop.grid.lps_to_index(p)
        value = ndimage.map_coordinates(crop.image.astype(np.float64), idx[:, None], order=1)[0]
        assert value == pytest.approx(float(p @ coef), abs=0.05)


def test_crop_extends_past_the_field_with_air_and_label_zero() -> None:
    grid = Grid(shape=(20, 20, 10), spacing_mm=(2.0, 2.0, 3.0), origin_lps_mm=(-10.0, 5.0, 40.0))
    hu = np.full(grid.shape, 300.0, dtype=np.float32)
    mask = np.zeros(grid.shape, dtype=np.uint8)
    mask[0:4, 0:4, 0:3] = 1  # touches the field's corner: the margin reaches outside
    crop = crop_heart(hu, grid, mask, margin_mm=20.0, spacing_mm=1.0)
    idx = grid.lps_to_index(crop.grid.index_to_lps(np.indices(crop.grid.shape).reshape(3, -1).T))
    hi = np.asarray(grid.shape) - 1
    inside = np.all((idx >= -1e-9) & (idx <= hi + 1e-9), axis=1).reshape(crop.grid.shape)
    outside = ~inside
    assert outside.sum() > 0.3 * outside.size
    assert np.all(crop.image[outside] == np.float32(HU_MIN_STORED))
    assert np.all(crop.image[inside] == np.float32(300.0))
    assert not crop.mask[outside].any()
    # the full margin is kept: the box is the heart box grown by 20 mm, not clipped
    np.testing.assert_allclose(np.asarray(crop.bbox_lps_mm[0]), np.asarray(crop.heart_bbox_lps_mm[0]) - 20.0)
    np.testing.assert_allclose(crop.heart_bbox_lps_mm[0], (-11.0, 4.0, 38.5))


def test_resample_out_of_field_fill_is_exact() -> None:
    grid = Grid(
        shape=(10, 12, 8),
        spacing_mm=(1.5, 1.5, 2.0),
        origin_lps_mm=(0.0, 0.0, 0.0),
        direction=as_direction(DIRECTIONS["ffs"]),
    )
    image = np.full(grid.shape, 55.0, dtype=np.float32)
    labels = np.full(grid.shape, 3, dtype=np.uint8)
    box = ((-40.0, -10.0, -10.0), (10.0, 40.0, 30.0))
    img, g_img = resample_to_spacing(image, grid, 1.0, order=1, fill_value=HU_MIN_STORED, bbox_lps=box)
    lab, g_lab = resample_to_spacing(labels, grid, 1.0, order=0, fill_value=0, bbox_lps=box)
    assert g_img == g_lab
    assert g_img.shape == (50, 50, 40)
    assert lab.dtype == np.uint8
    assert set(np.unique(img).tolist()) == {55.0, HU_MIN_STORED}
    assert set(np.unique(lab).tolist()) == {0, 3}
    np.testing.assert_array_equal(img == HU_MIN_STORED, lab == 0)


def test_resample_whole_volume_preserves_extent() -> None:
    grid = Grid(shape=(7, 9, 5), spacing_mm=(0.7, 0.7, 2.5), origin_lps_mm=(3.0, -4.0, 10.0))
    image = np.zeros(grid.shape, dtype=np.float32)
    out, g = resample_to_spacing(image, grid, 1.0, order=1, fill_value=HU_MIN_STORED)
    assert g.shape == (5, 7, 13)  # ceil(4.9), ceil(6.3), ceil(12.5)
    assert out.shape == g.shape
    lo_in, _ = world_bbox_of_mask(np.ones(grid.shape, dtype=bool), grid)
    lo_out, _ = world_bbox_of_mask(np.ones(g.shape, dtype=bool), g)
    np.testing.assert_allclose(lo_out, lo_in)


def test_world_bbox_of_single_voxel_on_flipped_grid() -> None:
    grid = Grid(
        shape=(5, 5, 5), spacing_mm=(2.0, 1.0, 3.0), origin_lps_mm=(0, 0, 0), direction=as_direction(DIRECTIONS["ffs"])
    )
    mask = np.zeros(grid.shape, dtype=np.uint8)
    mask[1, 2, 3] = 1
    lo, hi = world_bbox_of_mask(mask, grid)
    np.testing.assert_allclose(lo, (-3.0, 1.5, 7.5))
    np.testing.assert_allclose(hi, (-1.0, 2.5, 10.5))
    with pytest.raises(ValueError, match="empty"):
        world_bbox_of_mask(np.zeros(grid.shape, dtype=np.uint8), grid)


def test_all_air_volume_gives_empty_mask_and_input_error() -> None:
    grid = _grid(_anatomy(0), "identity", shape=(48, 48, 30))
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    mask = segment_heart_fallback(hu, grid)
    assert mask.dtype == np.uint8
    assert mask.shape == grid.shape
    assert not mask.any()
    with pytest.raises(InputDataError) as info:
        crop_heart(hu, grid, mask)
    assert str(info.value) == EMPTY_MASK_MESSAGE
    assert EMPTY_MASK_MESSAGE == (
        "heart segmentation is empty: the series may be non-contrast or not a cardiac CT; check the series selection"
    )


@pytest.mark.parametrize("seed", [0, 4])
def test_non_contrast_scan_gives_empty_mask_and_input_error(seed: int) -> None:
    a = _anatomy(seed)
    grid = _grid(a, _direction_name(seed))
    out = render(a, grid, Contrast.non_contrast(), 22.0, np.random.default_rng(seed), fov_mm=190.0)
    mask = segment_heart_fallback(out.hu, grid)
    assert not mask.any()
    with pytest.raises(InputDataError, match="non-contrast"):
        crop_heart(out.hu, grid, mask)


def test_crop_result_is_frozen_and_rejects_bad_input() -> None:
    grid = Grid(shape=(8, 8, 8), spacing_mm=(1.0, 1.0, 1.0), origin_lps_mm=(0.0, 0.0, 0.0))
    hu = np.zeros(grid.shape, dtype=np.float32)
    mask = np.zeros(grid.shape, dtype=np.uint8)
    mask[3:5, 3:5, 3:5] = 1
    crop = crop_heart(hu, grid, mask, margin_mm=0.0)
    assert isinstance(crop, CropResult)
    assert crop.grid.shape == (2, 2, 2)
    with pytest.raises(AttributeError):
        crop.margin = 1.0  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="shape"):
        crop_heart(hu, grid, mask[:-1])
    with pytest.raises(ValueError, match="margin_mm"):
        crop_heart(hu, grid, mask, margin_mm=-1.0)
