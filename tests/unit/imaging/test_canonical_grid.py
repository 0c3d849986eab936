"""Canonical axis order: every scan reaches the models the same way round, whatever the patient position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cardiofm.imaging.geometry import Grid, canonical_grid
from cardiofm.training.config import TrainConfig
from cardiofm.training.data import load_manifest, load_sample
from tests.unit.training.dataset_helpers import vessel_case, write_dataset

IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
#: Head-first prone (x and y reversed); feet-first supine stored with the i and j axes swapped.
PRONE = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0))
FEET_FIRST_SWAPPED = ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0))


def _centres(grid: Grid) -> np.ndarray:
    ijk = np.indices(grid.shape).reshape(3, -1).T
    points = grid.index_to_lps(ijk)
    return points[np.lexsort(points.T[::-1])]


@pytest.mark.parametrize("direction", [PRONE, FEET_FIRST_SWAPPED])
def test_canonical_grid_points_its_axes_along_lps_and_keeps_every_voxel_centre(direction: tuple) -> None:
    grid = Grid(shape=(4, 5, 6), spacing_mm=(1.0, 2.0, 3.0), origin_lps_mm=(10.0, -20.0, 30.0), direction=direction)
    canon = canonical_grid(grid)
    np.testing.assert_allclose(canon.direction_matrix, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(_centres(canon), _centres(grid), atol=1e-9)
    # each axis keeps its own voxel size: a 3 mm slice axis stays the 3 mm axis
    assert sorted(zip(canon.shape, canon.spacing_mm, strict=True)) == sorted(
        zip(grid.shape, grid.spacing_mm, strict=True)
    )
    assert canonical_grid(canon) == canon


def test_an_lps_grid_is_its_own_canonical_grid() -> None:
    grid = Grid(shape=(3, 4, 5), spacing_mm=(0.7, 0.7, 1.25), origin_lps_mm=(1.0, 2.0, 3.0), direction=IDENTITY)
    assert canonical_grid(grid) == grid


def _reoriented_copy(spec, direction):  # type: ignore[no-untyped-def]
    """The same physical volume stored on a grid with the signed-permutation ``direction``, arrays to match."""
    d = np.asarray(direction)
    perm = [int(np.argmax(np.abs(d[:, i]))) for i in range(3)]  # stored axis i runs along world axis perm[i]
    flips = [bool(d[perm[i], i] < 0) for i in range(3)]

    def move(a: np.ndarray) -> np.ndarray:
        out = np.transpose(a, perm)
        for axis, flip in enumerate(flips):
            if flip:
                out = np.flip(out, axis=axis)
        return np.ascontiguousarray(out)

    shape = tuple(spec.grid.shape[p] for p in perm)
    spacing = tuple(spec.grid.spacing_mm[p] for p in perm)
    corner = [0, 0, 0]  # the canonical index of the stored grid's voxel (0, 0, 0)
    for axis, flip in zip(perm, flips, strict=True):
        corner[axis] = spec.grid.shape[axis] - 1 if flip else 0
    first = spec.grid.index_to_lps(corner)
    grid = Grid(shape, spacing, tuple(float(v) for v in first), direction)  # type: ignore[arg-type]
    assert canonical_grid(grid) == spec.grid
    spec.hu, spec.heart = move(spec.hu), move(spec.heart)
    spec.masks = {task: move(mask) for task, mask in spec.masks.items()}
    spec.grid = grid
    return spec


@pytest.mark.parametrize("direction", [PRONE, FEET_FIRST_SWAPPED])
def test_a_prone_or_feet_first_case_trains_on_the_same_arrays_as_its_supine_twin(
    tmp_path: Path, direction: tuple
) -> None:
    """The loader (training, pseudo-labels, inference) puts a reoriented copy of a case on the same grid."""
    cfg = TrainConfig(tasks=("coronaries",))  # training spacing 1 mm, as the case's
    supine = vessel_case("case-a", shape=(12, 14, 16), spacing_mm=1.0)
    other = _reoriented_copy(vessel_case("case-a", shape=(12, 14, 16), spacing_mm=1.0), direction)
    samples = []
    for name, spec in (("supine", supine), ("other", other)):
        root = write_dataset(tmp_path / name, [spec])
        samples.append(load_sample(root, load_manifest(root).cases[0], cfg, heart_conditioning="onehot"))
    a, b = samples
    assert a.grid == b.grid == supine.grid
    np.testing.assert_allclose(b.image, a.image, atol=1e-5)
    np.testing.assert_array_equal(b.targets["coronaries"], a.targets["coronaries"])
    np.testing.assert_array_equal(b.heart, a.heart)
