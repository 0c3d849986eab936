"""Landmarks as voxel targets, and back: labelled spheres (the paper's representation) or Gaussian heatmaps.

Encoding
    :func:`encode_landmarks` rasterises LPS world points onto a :class:`~cardiofm.imaging.geometry.Grid`.
    ``"sphere"`` (the reference work, radius 4 mm) gives one multi-class ``uint8`` label map; ``"gaussian"`` gives
    one float32 heatmap per landmark. Distances are always measured in **world millimetres**, so spheres stay
    spheres on anisotropic and oblique grids (the reference work dropped the direction and measured in voxels).
    Only each point's bounding box is visited, with explicit bounds handling: a point near the border gives a
    partial sphere, a point wholly outside writes nothing (negative indices never wrap).

Decoding
    :func:`decode_landmarks` turns per-voxel class probabilities back into world points, keyed by **name**: a class
    that is not found is *omitted* from the result, it never shifts the others.

Missing labels
    A name in ``names`` with no point in ``points`` leaves its class empty (no sphere, an all-zero heatmap). An
    empty class is indistinguishable from "landmark absent from the image", so a training loss must **mask** that
    class for that case (exclude the heatmap channel; ignore the sphere class in the Dice/CE terms) rather than
    learn "no landmark here". :func:`encode_landmarks` does not do that masking; the caller knows which names
    were annotated (``present = [n in points for n in names]``).

Array conventions: volumes are indexed ``[i, j, k]`` like the grid; multi-channel arrays are ``(C, i, j, k)``.
This module depends on numpy and scipy only (no torch), so the data pipeline can use it anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cardiofm.contracts.landmarks import Point3
from cardiofm.errors import LabelError
from cardiofm.imaging.geometry import Grid

EncodingKind = Literal["sphere", "gaussian"]
DecodeMethod = Literal["largest_component", "weighted"]
#: How :func:`decode_landmarks` ranks a class's connected components (see its ``component`` parameter).
ComponentRule = Literal["mass", "voxels"]

#: 26-connectivity (faces, edges and corners), as in the reference decoder (cc3d default).
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
#: Heatmaps are written out to this many sigmas; beyond it the value (< exp(-8) ≈ 3e-4) is stored as 0.
_GAUSSIAN_TRUNCATE_SIGMAS = 4.0
#: A class region for decoding starts from voxels whose probability exceeds this value.
_SEED_THRESHOLD = 0.5
#: Sphere-model refinement: at most this many fixed-point steps, stopping once a step is below the tolerance (voxels).
_REFINE_STEPS = 12
_REFINE_TOL_VOXELS = 1e-4
#: "weighted" decoding grows the seed region to the connected voxels above this value (captures soft edges).
_SUPPORT_THRESHOLD = 0.02
#: Squared-distance slack (mm²) so that a voxel exactly on the sphere surface is inside despite round-off.
_SURFACE_EPS_MM2 = 1e-9


@dataclass(frozen=True)
class LandmarkEncoding:
    """How landmarks are represented as voxel targets.

    Attributes
    ----------
    kind:
        ``"sphere"``: labelled balls in one multi-class label map (the reference work's representation).
        ``"gaussian"``: one heatmap per landmark, ``exp(-d² / 2σ²)`` with ``d`` the world distance in mm.
    radius_mm:
        Sphere radius in mm (reference work: 4 mm). For ``"gaussian"`` it sets the default ``σ = radius_mm / 2``.
    sigma_mm:
        Gaussian standard deviation in mm; ``None`` means ``radius_mm / 2``. Ignored for spheres.
    """

    kind: EncodingKind = "sphere"
    radius_mm: float = 4.0
    sigma_mm: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("sphere", "gaussian"):
            raise ValueError(f"LandmarkEncoding.kind must be 'sphere' or 'gaussian', got {self.kind!r}")
        if not (math.isfinite(self.radius_mm) and self.radius_mm > 0):
            raise ValueError(f"LandmarkEncoding.radius_mm must be a positive number, got {self.radius_mm}")
        if self.sigma_mm is not None and not (math.isfinite(self.sigma_mm) and self.sigma_mm > 0):
            raise ValueError(f"LandmarkEncoding.sigma_mm must be a positive number or None, got {self.sigma_mm}")

    @property
    def effective_sigma_mm(self) -> float:
        """Gaussian σ in mm: ``sigma_mm`` if given, else ``radius_mm / 2``."""
        return self.sigma_mm if self.sigma_mm is not None else self.radius_mm / 2.0

    @property
    def sphere_volume_mm3(self) -> float:
        """Volume of one sphere, ``4/3 π r³`` (mm³)."""
        return 4.0 / 3.0 * math.pi * self.radius_mm**3


@dataclass(frozen=True)
class DecodedPoint:
    """One decoded landmark.

    Attributes
    ----------
    lps_mm:
        Position in LPS world coordinates, mm (sub-voxel).
    confidence:
        A score in ``[0, 1]``; see :func:`decode_landmarks` for its definition per input kind.
    """

    lps_mm: Point3
    confidence: float


def _check_names(names: Sequence[str]) -> list[str]:
    out = list(names)
    if not out:
        raise ValueError("names must not be empty")
    if len(set(out)) != len(out):
        raise ValueError(f"names must be unique, got {out}")
    return out


def _index_box(grid: Grid, centre_ijk: npt.NDArray[np.float64], reach_mm: float) -> tuple[slice, slice, slice] | None:
    """Voxel index ranges (clipped to the grid) within ``reach_mm`` of ``centre_ijk`` along every axis, or None.

    A ball of radius ``r`` mm spans exactly ``r / spacing`` index units along each grid axis whatever the
    direction matrix, because the direction is orthonormal.
    """
    half = reach_mm / np.asarray(grid.spacing_mm, dtype=np.float64)
    lo = np.maximum(np.ceil(centre_ijk - half - 1e-9).astype(np.int64), 0)
    hi = np.minimum(np.floor(centre_ijk + half + 1e-9).astype(np.int64), np.asarray(grid.shape) - 1)
    if bool(np.any(hi < lo)):
        return None
    return slice(int(lo[0]), int(hi[0]) + 1), slice(int(lo[1]), int(hi[1]) + 1), slice(int(lo[2]), int(hi[2]) + 1)


def _squared_distance_mm2(
    grid: Grid, box: tuple[slice, slice, slice], centre_ijk: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """World squared distance (mm²) from every voxel in ``box`` to the point at continuous index ``centre_ijk``.

    With an orthonormal direction matrix ``‖D S (x − c)‖² = Σ_a (s_a (x_a − c_a))²``, so the distance is a sum of
    three broadcast 1-D terms (block-shaped, no dense ``(N, 3)`` coordinate array).
    """
    terms = []
    for axis, sl in enumerate(box):
        ramp = (np.arange(sl.start, sl.stop, dtype=np.float64) - centre_ijk[axis]) * grid.spacing_mm[axis]
        shape = [1, 1, 1]
        shape[axis] = ramp.size
        terms.append((ramp * ramp).reshape(shape))
    return terms[0] + terms[1] + terms[2]


def _point_indices(points: Mapping[str, Point3], names: list[str], grid: Grid) -> dict[int, npt.NDArray[np.float64]]:
    """Continuous voxel index of every named point that is present, keyed by its position in ``names``."""
    out: dict[int, npt.NDArray[np.float64]] = {}
    for n, name in enumerate(names):
        if name not in points:
            continue
        xyz = np.asarray(points[name], dtype=np.float64)
        if xyz.shape != (3,) or not bool(np.isfinite(xyz).all()):
            raise LabelError(f"landmark {name} must be 3 finite LPS coordinates in mm, got {points[name]!r}")
        out[n] = grid.lps_to_index(xyz)
    return out


def encode_landmarks(
    points: Mapping[str, Point3],
    names: Sequence[str],
    grid: Grid,
    enc: LandmarkEncoding | None = None,
) -> npt.NDArray[np.uint8] | npt.NDArray[np.float32]:
    """Rasterise world landmarks onto ``grid``.

    Parameters
    ----------
    points:
        LPS world coordinates (mm) by landmark name. Names not in ``names`` are ignored; names in ``names`` that
        are absent here (missing labels) produce nothing for their class, and the caller must mask that class in
        the loss (see the module docstring). Points may lie outside the grid.
    names:
        Class order: ``names[n]`` gets label ``n + 1`` (spheres) or channel ``n`` (heatmaps).
    grid:
        Target grid; distances are measured in its world (mm) space, so anisotropic and oblique grids are exact.
    enc:
        Representation; default: spheres of radius 4 mm.

    Returns
    -------
    numpy.ndarray
        ``"sphere"``: ``uint8`` label map of shape ``grid.shape`` = ``(i, j, k)``; 0 is background, ``n + 1`` marks
        voxels whose centre lies within ``radius_mm`` of ``names[n]``. Where spheres overlap, each voxel goes to
        the **nearest** point (ties: the earlier name), independent of drawing order.
        ``"gaussian"``: ``float32`` array ``(len(names), i, j, k)``; channel ``n`` is ``exp(-d² / 2σ²)``, ``d`` the
        world distance to ``names[n]`` in mm, set to 0 beyond 4σ; all zeros for a missing name.

    Raises
    ------
    ValueError
        Empty or duplicate ``names``; more than 255 names for spheres.
    LabelError
        A point that is not three finite coordinates.
    """
    enc = enc if enc is not None else LandmarkEncoding()
    name_list = _check_names(names)
    centres = _point_indices(points, name_list, grid)
    if enc.kind == "gaussian":
        return _encode_gaussian(centres, len(name_list), grid, enc.effective_sigma_mm)
    if len(name_list) > 255:
        raise ValueError(f"a uint8 label map holds at most 255 landmark classes, got {len(name_list)}")
    labels = np.zeros(grid.shape, dtype=np.uint8)
    r2 = enc.radius_mm**2 + _SURFACE_EPS_MM2
    for n, c in centres.items():
        box = _index_box(grid, c, enc.radius_mm)
        if box is None:
            continue
        d2 = _squared_distance_mm2(grid, box, c)
        inside = d2 <= r2
        for m, other in centres.items():
            if m == n:
                continue
            d2_other = _squared_distance_mm2(grid, box, other)
            # Nearest point wins; an exact tie goes to the earlier name so the result never depends on order.
            inside &= (d2 < d2_other) | ((d2 == d2_other) & (n < m))
        labels[box][inside] = n + 1
    return labels


def encode_spheres(
    points: Mapping[str, Point3], names: Sequence[str], grid: Grid, radius_mm: float = 4.0
) -> npt.NDArray[np.uint8]:
    """Typed shortcut for :func:`encode_landmarks` with spheres: ``uint8`` label map of shape ``grid.shape``."""
    out = encode_landmarks(points, names, grid, LandmarkEncoding("sphere", radius_mm=radius_mm))
    return out.astype(np.uint8, copy=False)


def encode_heatmaps(
    points: Mapping[str, Point3], names: Sequence[str], grid: Grid, sigma_mm: float = 2.0
) -> npt.NDArray[np.float32]:
    """Typed shortcut for :func:`encode_landmarks` with Gaussians: ``float32`` ``(len(names), i, j, k)``."""
    out = encode_landmarks(points, names, grid, LandmarkEncoding("gaussian", radius_mm=2.0 * sigma_mm))
    return out.astype(np.float32, copy=False)


def _encode_gaussian(
    centres: Mapping[int, npt.NDArray[np.float64]], n_channels: int, grid: Grid, sigma_mm: float
) -> npt.NDArray[np.float32]:
    heat = np.zeros((n_channels, *grid.shape), dtype=np.float32)
    reach_mm = _GAUSSIAN_TRUNCATE_SIGMAS * sigma_mm
    for n, c in centres.items():
        box = _index_box(grid, c, reach_mm)
        if box is None:
            continue
        d2 = _squared_distance_mm2(grid, box, c)
        values = np.exp(-d2 / (2.0 * sigma_mm**2))
        values[d2 > reach_mm**2] = 0.0
        heat[(n, *box)] = values.astype(np.float32)
    return heat


def _bounding_box(mask: npt.NDArray[np.bool_]) -> tuple[slice, slice, slice] | None:
    """Smallest box holding every True voxel of a 3-D mask, or None if the mask is empty."""
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return box[0], box[1], box[2]


def _largest_component(
    mask: npt.NDArray[np.bool_], weights: npt.NDArray[np.floating] | None = None
) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]] | None:
    """Largest 26-connected component of a 3-D ``mask`` as (bounding box, boolean mask inside the box), or None.

    Size is the voxel count, or with ``weights`` (same shape as ``mask``) the sum of the weights over the
    component. Equal sizes: the component met first in C order wins (deterministic). Labelling runs only
    inside the bounding box of ``mask``, which keeps 200³ volumes fast.
    """
    outer = _bounding_box(mask)
    if outer is None:
        return None
    lab, _ = ndimage.label(mask[outer], structure=_CONNECTIVITY_26)
    sizes = np.bincount(lab.ravel(), weights=None if weights is None else weights[outer].ravel())
    sizes[0] = 0
    best = int(np.argmax(sizes))
    inner = ndimage.find_objects(lab, max_label=best)[best - 1]
    box = tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner, strict=True))
    return (box[0], box[1], box[2]), lab[inner] == best


def _centroid_ijk(
    box: tuple[slice, ...], mask: npt.NDArray[np.bool_], weights: npt.NDArray[np.floating] | None = None
) -> npt.NDArray[np.float64]:
    """(Weighted) mean continuous index of the voxels of ``mask`` (a block placed at ``box``)."""
    idx = np.nonzero(mask)
    offsets = np.array([sl.start for sl in box], dtype=np.float64)
    coords = np.stack([i.astype(np.float64) for i in idx], axis=1) + offsets
    if weights is None:
        return coords.mean(axis=0)
    w = weights[idx].astype(np.float64)
    return (coords * w[:, None]).sum(axis=0) / float(w.sum())


def _refine_sphere_centre(
    grid: Grid, observed_ijk: npt.NDArray[np.float64], radius_mm: float
) -> npt.NDArray[np.float64]:
    """Correct a sphere region's centroid for voxelisation and grid-border truncation.

    The voxel set of a ball rasterised at ``c`` has a centroid ``m(c)`` that differs from ``c`` by up to ~0.15
    voxel on coarse grids, and by much more when the ball is cut by the grid border. This finds ``c`` with
    ``m(c) = observed`` by the fixed-point iteration ``c ← c + observed − m(c)``, the ball rasterised exactly as
    :func:`encode_landmarks` does (world mm, clipped to the grid). Returns the iterate whose model centroid is
    closest to ``observed``; the observed centroid itself if the model ball ever falls off the grid.
    """
    r2 = radius_mm**2 + _SURFACE_EPS_MM2
    best, best_miss = observed_ijk, math.inf
    c = observed_ijk.copy()
    for _ in range(_REFINE_STEPS):
        box = _index_box(grid, c, radius_mm)
        if box is None:
            break
        inside = _squared_distance_mm2(grid, box, c) <= r2
        if not bool(inside.any()):
            break
        step = observed_ijk - _centroid_ijk(box, inside)
        miss = float(np.abs(step).max())
        if miss < best_miss:
            best, best_miss = c, miss
        if miss < _REFINE_TOL_VOXELS:
            break
        c = c + step
    return best


def decode_landmarks(
    probs: npt.NDArray[np.floating],
    names: Sequence[str],
    grid: Grid,
    method: DecodeMethod = "largest_component",
    *,
    enc: LandmarkEncoding | None = None,
    has_background: bool | None = None,
    refine: bool = True,
    component: ComponentRule = "mass",
) -> dict[str, DecodedPoint]:
    """Decode per-voxel class scores into world landmarks, keyed by name.

    Parameters
    ----------
    probs:
        ``(C, i, j, k)`` scores on ``grid``. Either softmax probabilities of a sphere head, ``C = len(names) + 1``
        with **background in channel 0** and ``names[n]`` in channel ``n + 1``; or heatmaps (Gaussian encoding),
        ``C = len(names)`` with ``names[n]`` in channel ``n`` and no background channel.
    names:
        Landmark names in class order.
    grid:
        Grid of the spatial axes of ``probs``; decoded points are returned in its LPS world space.
    method:
        ``"largest_component"`` (the reference work's decoder): voxel label = argmax over the channels (for
        heatmaps: the channel with the highest value if it exceeds ``exp(-r² / 2σ²)``, the heatmap level at the
        sphere radius, else background, so an ideal heatmap yields the same ball as a sphere label); per class
        the largest 26-connected component (see ``component``); its **unweighted** centroid (continuous index,
        sub-voxel) mapped to LPS.
        ``"weighted"``: per class the largest 26-connected component of ``p > 0.5`` (the class's own
        probability/heatmap) is the seed; it grows to the 26-connected region of ``p > 0.02`` that contains it,
        and the point is the ``p``-weighted centroid over that region (sub-voxel, uses the soft edges). Blobs
        not connected to the seed, e.g. spurious detections elsewhere, are ignored by both methods.
    enc:
        The encoding the head was trained with; its sphere volume enters the confidence (default: 4 mm spheres).
    has_background:
        Whether channel 0 is background. ``None`` infers it from ``C`` (``len(names) + 1`` → yes,
        ``len(names)`` → no).
    refine:
        Correct the centroid of a ball-shaped region (``"largest_component"``, and ``"weighted"`` with a
        background channel) for voxelisation and grid-border truncation of an ``enc.radius_mm`` ball (see
        :func:`_refine_sphere_centre`): the error of an ideal sphere drops from up to ~0.15 voxel (and ~0.3 mm for
        a sphere cut by the border) to a few hundredths of a voxel. ``False`` gives the reference work's plain
        centroid. Not applied to ``"weighted"`` heatmap decoding, whose weighted centroid is already unbiased.
    component:
        Which connected component is "largest": ``"mass"`` (default) the one holding the most probability of
        the class (the sum of its ``p``), so a less certain false detection elsewhere loses to the confident
        structure even when it has a few more voxels; ``"voxels"`` the one with the most voxels (the reference
        work's rule). Both agree on hard (0/1) scores.

    Returns
    -------
    dict[str, DecodedPoint]
        One entry per **found** landmark; a class with no voxel assigned (or no ``p > 0.5`` for ``"weighted"``)
        is omitted, never replaced or shifted. ``confidence`` is, with a background channel, the mean class
        probability over the decoded component times ``min(1, component volume / (4/3 π r³))`` (a truncated or
        fragmentary sphere scores lower); for heatmaps, the peak heatmap value in the component, clipped to
        ``[0, 1]``.

    Raises
    ------
    ValueError
        ``probs`` is not 4-D, does not match ``grid.shape`` or the channel count, or has non-finite values;
        unknown ``method``.
    """
    enc = enc if enc is not None else LandmarkEncoding()
    name_list = _check_names(names)
    p = np.asarray(probs)
    if p.ndim != 4 or tuple(p.shape[1:]) != tuple(grid.shape):
        raise ValueError(f"probs must have shape (C, *{tuple(grid.shape)}), got {p.shape}")
    n_classes = len(name_list)
    if has_background is None:
        if p.shape[0] == n_classes + 1:
            has_background = True
        elif p.shape[0] == n_classes:
            has_background = False
        else:
            raise ValueError(
                f"probs has {p.shape[0]} channels; expected {n_classes + 1} (with background) or "
                f"{n_classes} (heatmaps) for {n_classes} names"
            )
    expected = n_classes + 1 if has_background else n_classes
    if p.shape[0] != expected:
        raise ValueError(
            f"probs has {p.shape[0]} channels, expected {expected} for {n_classes} names "
            f"(has_background={has_background})"
        )
    if not bool(np.isfinite(p).all()):
        raise ValueError("probs contains non-finite values")
    if method not in ("largest_component", "weighted"):
        raise ValueError(f"method must be 'largest_component' or 'weighted', got {method!r}")
    if component not in ("mass", "voxels"):
        raise ValueError(f"component must be 'mass' or 'voxels', got {component!r}")
    first = 1 if has_background else 0
    voxel_mm3 = float(np.prod(grid.spacing_mm))

    label_map: npt.NDArray[np.intp] | None = None
    if method == "largest_component":
        if has_background:
            label_map = np.argmax(p, axis=0)
        else:
            level = math.exp(-(enc.radius_mm**2) / (2.0 * enc.effective_sigma_mm**2))
            label_map = np.where(p.max(axis=0) > level, np.argmax(p, axis=0) + 1, 0)

    out: dict[str, DecodedPoint] = {}
    for n, name in enumerate(name_list):
        channel = p[first + n]
        mass = channel if component == "mass" else None
        if label_map is not None:
            found = _largest_component(label_map == n + 1, mass)
            if found is None:
                continue
            box, comp = found
            centre = _centroid_ijk(box, comp)
            if refine:
                centre = _refine_sphere_centre(grid, centre, enc.radius_mm)
        else:
            found = _largest_component(channel > _SEED_THRESHOLD, mass)
            if found is None:
                continue
            seed_box, seed = found
            # Grow the seed to the connected region above the support threshold (labelled inside its bounding box).
            above = channel > _SUPPORT_THRESHOLD
            outer = _bounding_box(above)
            if outer is None:  # unreachable: the seed lies above the support threshold
                continue
            support, _ = ndimage.label(above[outer], structure=_CONNECTIVITY_26)
            seed_voxel = tuple(
                int(i[0]) + sl.start - o.start for i, sl, o in zip(np.nonzero(seed), seed_box, outer, strict=True)
            )
            region = support == support[seed_voxel]
            inner = _bounding_box(region)
            if inner is None:  # unreachable: the region holds the seed voxel
                continue
            region_box = tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner, strict=True))
            channel_box = channel[region_box]
            centre = _centroid_ijk(region_box, region[inner], channel_box)
            if refine and has_background:
                centre = _refine_sphere_centre(grid, centre, enc.radius_mm)
            box, comp = seed_box, seed
        values = channel[box][comp]
        if has_background:
            fill = min(1.0, comp.sum() * voxel_mm3 / enc.sphere_volume_mm3)
            confidence = float(values.mean()) * fill
        else:
            confidence = float(values.max())
        xyz = grid.index_to_lps(centre)
        out[name] = DecodedPoint(
            lps_mm=(float(xyz[0]), float(xyz[1]), float(xyz[2])),
            confidence=float(np.clip(confidence, 0.0, 1.0)),
        )
    return out
