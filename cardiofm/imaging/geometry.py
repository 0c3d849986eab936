"""Voxel grids in DICOM patient coordinates, and the one place where LPS and RAS meet.

Conventions used throughout cardiofm:

* World coordinates are DICOM patient coordinates **LPS** in millimetres: +x towards the patient's
  left, +y posterior, +z superior.
* A volume array is indexed ``[i, j, k]`` (nibabel order): ``i`` runs along a DICOM row (the column
  index), ``j`` down the columns (the row index), ``k`` over slices.
* NIfTI affines are **RAS** (x right-to-left flipped, y flipped). Conversion happens only here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Multiplying an LPS point by this (elementwise) gives RAS, and vice versa.
_LPS_TO_RAS_SIGNS = np.array([-1.0, -1.0, 1.0])
LPS_TO_RAS_4X4: FloatArray = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Largest |cos| between two voxel axes accepted as round-off rather than shear.
_SHEAR_COS = 1e-4


def lps_to_ras(points_mm: npt.ArrayLike) -> FloatArray:
    """Convert points ``(..., 3)`` from LPS to RAS millimetres (the operation is its own inverse)."""
    return np.asarray(points_mm, dtype=np.float64) * _LPS_TO_RAS_SIGNS


def ras_to_lps(points_mm: npt.ArrayLike) -> FloatArray:
    """Convert points ``(..., 3)`` from RAS to LPS millimetres."""
    return np.asarray(points_mm, dtype=np.float64) * _LPS_TO_RAS_SIGNS


def as_direction(matrix: npt.ArrayLike) -> tuple[tuple[float, float, float], ...]:
    """A 3×3 direction matrix (columns = axis unit vectors) as the nested tuple :class:`Grid` stores."""
    m = np.asarray(matrix, dtype=np.float64).reshape(3, 3)
    return tuple((float(r[0]), float(r[1]), float(r[2])) for r in m)


def as_point(p: npt.ArrayLike) -> tuple[float, float, float]:
    """A 3-vector as a tuple of floats."""
    a = np.asarray(p, dtype=np.float64).reshape(3)
    return (float(a[0]), float(a[1]), float(a[2]))


@dataclass(frozen=True)
class Grid:
    """A regular 3-D voxel grid placed in LPS world space.

    Attributes
    ----------
    shape:
        ``(ni, nj, nk)`` voxels.
    spacing_mm:
        ``(si, sj, sk)`` distance between voxel centres along each axis, mm.
    origin_lps_mm:
        LPS position of the centre of voxel ``(0, 0, 0)``, mm.
    direction:
        3×3 matrix whose **columns** are the LPS unit vectors of the i, j and k axes.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def __post_init__(self) -> None:
        d = self.direction_matrix
        if d.shape != (3, 3) or not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
            raise ValueError("Grid.direction must be an orthonormal 3×3 matrix (columns = axis directions)")
        if any(s <= 0 for s in self.spacing_mm):
            raise ValueError(f"Grid.spacing_mm must be positive, got {self.spacing_mm}")
        if any(n <= 0 for n in self.shape):
            raise ValueError(f"Grid.shape must be positive, got {self.shape}")

    @property
    def direction_matrix(self) -> FloatArray:
        """Direction as a 3×3 array (columns = i, j, k unit vectors in LPS)."""
        return np.asarray(self.direction, dtype=np.float64)

    @property
    def affine_lps(self) -> FloatArray:
        """4×4 matrix mapping voxel index ``(i, j, k, 1)`` to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing_mm)[None, :]
        a[:3, 3] = self.origin_lps_mm
        return a

    @property
    def affine_ras(self) -> FloatArray:
        """4×4 NIfTI affine (voxel index to RAS mm) of the same grid."""
        return LPS_TO_RAS_4X4 @ self.affine_lps

    @classmethod
    def from_affine_ras(cls, affine_ras: npt.ArrayLike, shape: tuple[int, ...]) -> Grid:
        """Build a grid from a NIfTI (RAS) affine and a 3-D shape.

        Float32 round-off in the directions is orthonormalised away; a non-finite affine, a zero
        spacing or real shear (axes more than ~0.006° off perpendicular) raise ``ValueError``.
        """
        a = np.asarray(affine_ras, dtype=np.float64)
        if a.shape != (4, 4) or not bool(np.isfinite(a).all()):
            raise ValueError("non-finite or malformed affine (expected a finite 4×4 matrix)")
        a_lps = LPS_TO_RAS_4X4 @ a
        m = a_lps[:3, :3]
        spacing = np.linalg.norm(m, axis=0)
        if float(spacing.min()) <= 1e-6:
            raise ValueError(f"zero voxel spacing {tuple(round(float(v), 6) for v in spacing)} mm")
        unit = m / spacing[None, :]
        off = float(np.abs(unit.T @ unit - np.eye(3)).max())
        if off > _SHEAR_COS:
            angle = 90.0 - float(np.degrees(np.arccos(min(1.0, off))))
            raise ValueError(f"sheared affine: voxel axes {angle:.2f} degrees off perpendicular")
        u, _, vt = np.linalg.svd(unit)
        return cls(
            shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
            origin_lps_mm=as_point(a_lps[:3, 3]),
            direction=as_direction(u @ vt),
        )

    def index_to_lps(self, ijk: npt.ArrayLike) -> FloatArray:
        """Map continuous voxel indices ``(..., 3)`` to LPS mm."""
        idx = np.asarray(ijk, dtype=np.float64)
        a = self.affine_lps
        return idx @ a[:3, :3].T + a[:3, 3]

    def lps_to_index(self, points_lps_mm: npt.ArrayLike) -> FloatArray:
        """Map LPS points ``(..., 3)`` to continuous voxel indices (may lie outside the grid)."""
        p = np.asarray(points_lps_mm, dtype=np.float64)
        a = self.affine_lps
        inv = np.linalg.inv(a[:3, :3])
        return (p - a[:3, 3]) @ inv.T

    def contains_index(self, ijk: npt.ArrayLike, margin: float = 0.0) -> bool:
        """True if continuous indices lie within ``[-0.5 + margin, n - 0.5 - margin]`` on every axis."""
        idx = np.asarray(ijk, dtype=np.float64)
        lo = -0.5 + margin
        hi = np.asarray(self.shape, dtype=np.float64) - 0.5 - margin
        return bool(np.all((idx >= lo) & (idx <= hi)))

    def sub_grid(self, lo: npt.ArrayLike, hi: npt.ArrayLike) -> Grid:
        """The grid of the voxels ``lo <= (i, j, k) < hi`` (integer index bounds): same spacing and direction."""
        lo_i, hi_i = np.asarray(lo, dtype=int), np.asarray(hi, dtype=int)
        if np.any(lo_i < 0) or np.any(hi_i > np.asarray(self.shape)) or np.any(hi_i <= lo_i):
            raise ValueError(f"index box {lo_i.tolist()}..{hi_i.tolist()} is empty or outside the grid {self.shape}")
        shape = hi_i - lo_i
        return Grid(
            shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            spacing_mm=self.spacing_mm,
            origin_lps_mm=as_point(self.index_to_lps(lo_i.astype(np.float64))),
            direction=self.direction,
        )

    def corners_lps(self) -> FloatArray:
        """LPS positions of the 8 corner voxel centres, shape ``(8, 3)``."""
        ni, nj, nk = (n - 1 for n in self.shape)
        corners = np.array([[i, j, k] for i in (0, ni) for j in (0, nj) for k in (0, nk)], dtype=np.float64)
        return self.index_to_lps(corners)


def canonical_grid(grid: Grid) -> Grid:
    """The same voxel centres, re-indexed so that the i, j, k axes point as nearly as possible along +L, +P, +S.

    Axes are only permuted and flipped (no interpolation is needed to move an array onto it, and an oblique
    grid stays oblique). A network then sees every scan the same way round whatever the patient position
    (head or feet first, supine or prone) and the scanner's storage order; without it, a prone scan shows
    the heart upside down to a model trained on supine ones.
    """
    d = grid.direction_matrix
    # the axis permutation with the largest total alignment: world axis w takes source axis perm[w]
    perm = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[w, p[w]]) for w in range(3)))
    signs = [1.0 if d[w, perm[w]] >= 0 else -1.0 for w in range(3)]
    first = [0.0, 0.0, 0.0]
    for w, axis in enumerate(perm):
        if signs[w] < 0:
            first[axis] = grid.shape[axis] - 1.0
    direction = np.stack([signs[w] * d[:, perm[w]] for w in range(3)], axis=1)
    return Grid(
        shape=(grid.shape[perm[0]], grid.shape[perm[1]], grid.shape[perm[2]]),
        spacing_mm=(grid.spacing_mm[perm[0]], grid.spacing_mm[perm[1]], grid.spacing_mm[perm[2]]),
        origin_lps_mm=as_point(grid.index_to_lps(first)),
        direction=as_direction(direction),
    )
