"""Soft rasterisation of implicit shapes onto a voxel grid, restricted to each shape's bounding box.

A shape is a function of *local* coordinates ``(u, v, w)`` in mm (a frame with origin ``centre`` and
orthonormal axes ``axes``) that returns an approximate signed distance in mm (negative inside).
Painting blends a value into the volume with a linear ramp one voxel wide, which imitates the
partial-volume effect of a real reconstruction and keeps sub-voxel geometry visible.

Local coordinates are never built from a dense ``(N, 3)`` world array: because a grid is affine,
each local coordinate is a sum of three broadcast 1-D ramps, which keeps memory at a few block-sized
float32 arrays even for 512×512×300 volumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cardiofm.imaging.geometry import Grid

F32 = npt.NDArray[np.float32]
LocalSdf = Callable[[F32, F32, F32], F32]

#: Slices processed at once; bounds peak memory for large shapes.
_CHUNK_SLICES = 48
#: Cylinders at least this long (half length, mm) reach past any field of view: their caps never show.
_EXTRUDED_HALF_LENGTH_MM = 500.0


@dataclass(frozen=True)
class Shape:
    """An implicit shape placed in LPS space.

    Attributes
    ----------
    centre:
        LPS origin of the local frame, mm.
    axes:
        3×3 array whose columns are the local u, v, w unit vectors in LPS.
    half_extent_mm:
        Half size of the local bounding box along u, v, w (the sdf is only evaluated inside it), mm.
    sdf:
        Approximate signed distance (mm, negative inside) as a function of local u, v, w.
    """

    centre: npt.NDArray[np.float64]
    axes: npt.NDArray[np.float64]
    half_extent_mm: tuple[float, float, float]
    sdf: LocalSdf
    #: True when the sdf does not vary along the local w axis inside any grid (a long cylinder):
    #: on a grid whose slices are perpendicular to w it is evaluated on one slice and broadcast.
    extruded: bool = False


def _index_box(grid: Grid, shape: Shape) -> tuple[slice, slice, slice] | None:
    """Index ranges of the voxels that can lie inside ``shape``'s local bounding box, or None."""
    h = np.asarray(shape.half_extent_mm)
    corners_local = np.array([[su, sv, sw] for su in (-1, 1) for sv in (-1, 1) for sw in (-1, 1)]) * h
    corners_lps = shape.centre + corners_local @ shape.axes.T
    idx = grid.lps_to_index(corners_lps)
    lo = np.floor(idx.min(axis=0)).astype(int) - 1
    hi = np.ceil(idx.max(axis=0)).astype(int) + 2
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(grid.shape))
    if np.any(hi <= lo):
        return None
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1])), slice(int(lo[2]), int(hi[2]))


def _local_coords(grid: Grid, shape: Shape, box: tuple[slice, slice, slice]) -> tuple[F32, F32, F32]:
    """Local u, v, w (mm) of every voxel in ``box`` as three block-shaped float32 arrays."""
    a = grid.affine_lps
    # local = axes^T (origin + M @ ijk - centre)
    m_local = shape.axes.T @ a[:3, :3]  # 3x3: d(local)/d(ijk)
    offset = shape.axes.T @ (a[:3, 3] - shape.centre)
    ramps = [np.arange(s.start, s.stop, dtype=np.float32) for s in box]
    out: list[F32] = []
    for c in range(3):
        ri = (ramps[0] * np.float32(m_local[c, 0]))[:, None, None]
        rj = (ramps[1] * np.float32(m_local[c, 1]))[None, :, None]
        rk = (ramps[2] * np.float32(m_local[c, 2]) + np.float32(offset[c]))[None, None, :]
        out.append((ri + rj + rk).astype(np.float32, copy=False))
    return out[0], out[1], out[2]


def _slices_perpendicular_to_w(grid: Grid, shape: Shape) -> bool:
    """True if the grid's i and j axes are perpendicular to the shape's w axis (slices ⟂ w)."""
    w = shape.axes[:, 2]
    d = grid.direction_matrix
    return bool(abs(d[:, 0] @ w) < 1e-9 and abs(d[:, 1] @ w) < 1e-9)


def occupancy_blocks(grid: Grid, shape: Shape) -> list[tuple[tuple[slice, slice, slice], F32]]:
    """Fractional occupancy (0..1) of ``shape`` per voxel, returned as (index box, values) chunks."""
    box = _index_box(grid, shape)
    if box is None:
        return []
    ramp_mm = float(np.mean(grid.spacing_mm))
    blocks: list[tuple[tuple[slice, slice, slice], F32]] = []
    k0, k1 = box[2].start, box[2].stop
    if shape.extruded and _slices_perpendicular_to_w(grid, shape):
        one = (box[0], box[1], slice(k0, k0 + 1))
        u, v, w = _local_coords(grid, shape, one)
        occ = np.clip(np.float32(0.5) - shape.sdf(u, v, np.zeros_like(w)) / np.float32(ramp_mm), 0.0, 1.0)
        if np.any(occ > 0):
            blocks.append(((box[0], box[1], slice(k0, k1)), occ.astype(np.float32, copy=False)))
        return blocks
    for ks in range(k0, k1, _CHUNK_SLICES):
        sub = (box[0], box[1], slice(ks, min(ks + _CHUNK_SLICES, k1)))
        u, v, w = _local_coords(grid, shape, sub)
        d = shape.sdf(u, v, w)
        occ = np.clip(np.float32(0.5) - d / np.float32(ramp_mm), 0.0, 1.0).astype(np.float32, copy=False)
        if np.any(occ > 0):
            blocks.append((sub, occ))
    return blocks


def paint(
    volume: F32,
    grid: Grid,
    shape: Shape,
    value: float,
    labels: npt.NDArray[np.uint8] | None = None,
    label: int = 0,
) -> None:
    """Blend ``value`` into ``volume`` where ``shape`` lies; set ``labels`` to ``label`` where occupancy ≥ 0.5.

    ``label == 0`` leaves ``labels`` untouched (a shape that is not part of the label map).
    """
    for sub, occ in occupancy_blocks(grid, shape):
        block = volume[sub]
        block += occ * (np.float32(value) - block)
        if labels is not None and label:
            labels[sub][np.broadcast_to(occ >= 0.5, block.shape)] = label


def frame_from_w(w_axis: npt.ArrayLike, hint: npt.ArrayLike = (1.0, 0.0, 0.0)) -> npt.NDArray[np.float64]:
    """Orthonormal frame (columns u, v, w) whose w axis is ``w_axis``; u is as close to ``hint`` as possible."""
    w = np.asarray(w_axis, dtype=np.float64)
    w = w / np.linalg.norm(w)
    h = np.asarray(hint, dtype=np.float64)
    u = h - (h @ w) * w
    if np.linalg.norm(u) < 1e-6:
        alt = np.array([0.0, 1.0, 0.0]) if abs(w[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
        u = alt - (alt @ w) * w
    u = u / np.linalg.norm(u)
    v = np.cross(w, u)
    return np.stack([u, v, w], axis=1)


# --------------------------------------------------------------------------- primitive shapes


def ellipsoid(centre: npt.ArrayLike, axes: npt.ArrayLike, radii_mm: tuple[float, float, float]) -> Shape:
    """Ellipsoid with semi-axes ``radii_mm`` along the local u, v, w axes."""
    a, b, c = (np.float32(r) for r in radii_mm)
    rmin = np.float32(min(radii_mm))

    def sdf(u: F32, v: F32, w: F32) -> F32:
        q = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
        return ((q - 1.0) * rmin).astype(np.float32, copy=False)

    return Shape(np.asarray(centre, dtype=np.float64), np.asarray(axes, dtype=np.float64), radii_mm, sdf)


def elliptic_cylinder(
    centre: npt.ArrayLike, axes: npt.ArrayLike, radii_mm: tuple[float, float], half_length_mm: float
) -> Shape:
    """Elliptic cylinder around the local w axis, capped at ``|w| = half_length_mm``."""
    a, b = np.float32(radii_mm[0]), np.float32(radii_mm[1])
    rmin = np.float32(min(radii_mm))
    hl = np.float32(half_length_mm)

    def sdf(u: F32, v: F32, w: F32) -> F32:
        radial = (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * rmin
        return np.maximum(radial, np.abs(w) - hl).astype(np.float32, copy=False)

    return Shape(
        np.asarray(centre, dtype=np.float64),
        np.asarray(axes, dtype=np.float64),
        (float(a), float(b), float(hl)),
        sdf,
        extruded=half_length_mm >= _EXTRUDED_HALF_LENGTH_MM,
    )


def capsule(p0: npt.ArrayLike, p1: npt.ArrayLike, r0_mm: float, r1_mm: float) -> Shape:
    """Tube segment from ``p0`` to ``p1`` with radius tapering linearly from ``r0_mm`` to ``r1_mm`` (round caps)."""
    a = np.asarray(p0, dtype=np.float64)
    b = np.asarray(p1, dtype=np.float64)
    length = float(np.linalg.norm(b - a))
    if length < 1e-6:
        raise ValueError("capsule end points coincide")
    axes = frame_from_w(b - a)
    centre = (a + b) / 2
    half = length / 2
    rmax = max(r0_mm, r1_mm)
    f_half, f_r0, f_r1 = np.float32(half), np.float32(r0_mm), np.float32(r1_mm)

    def sdf(u: F32, v: F32, w: F32) -> F32:
        t = np.clip((w + f_half) / (2 * f_half), 0.0, 1.0)
        wc = t * (2 * f_half) - f_half
        dist = np.sqrt(u * u + v * v + (w - wc) ** 2)
        return (dist - (f_r0 + t * (f_r1 - f_r0))).astype(np.float32, copy=False)

    return Shape(centre, axes, (rmax + 1.0, rmax + 1.0, half + rmax + 1.0), sdf)


def tube(points: npt.ArrayLike, radii_mm: npt.ArrayLike) -> list[Shape]:
    """A polyline tube as consecutive capsules; ``radii_mm`` gives the radius at each point."""
    pts = np.asarray(points, dtype=np.float64)
    rad = np.broadcast_to(np.asarray(radii_mm, dtype=np.float64), (len(pts),))
    return [capsule(pts[n], pts[n + 1], float(rad[n]), float(rad[n + 1])) for n in range(len(pts) - 1)]
