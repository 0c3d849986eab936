"""``report.png``: the prediction at a glance, for the clinician who checks it before using the numbers.

Four panels of the heart crop, in the radiological convention (patient's right on the viewer's left,
anterior up in the axial view, head up in the coronal and sagittal views): axial, coronal and sagittal
slices through the annulus centre with the points within a few millimetres of each slice, the calcium
in red and the annular plane drawn where it cuts the slice; and the double-oblique view in the annular
plane with the basal ring. No patient information is written into the figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from cardiofm.contracts.measurements import AnnularPlane
from cardiofm.imaging.geometry import Grid, canonical_grid
from cardiofm.imaging.resample import resample_onto

F32 = npt.NDArray[np.float32]
Point3 = tuple[float, float, float]
#: Points this close to a slice (mm) are drawn on it.
SLICE_TOLERANCE_MM = 4.0
#: Half width of the double-oblique view, mm, and its pixel size.
OBLIQUE_HALF_MM = 30.0
OBLIQUE_STEP_MM = 0.5
WINDOW_HU = (-200.0, 800.0)


def _in_plane_axes(normal: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    helper = np.array([0.0, -1.0, 0.0]) if abs(normal[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = helper - (helper @ normal) * normal
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(normal, e1)


def _oblique(hu: F32, grid: Grid, plane: AnnularPlane) -> tuple[F32, npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    centre, normal = np.asarray(plane.centre_mm), np.asarray(plane.normal)
    e1, e2 = _in_plane_axes(normal)
    u = np.arange(-OBLIQUE_HALF_MM, OBLIQUE_HALF_MM + 1e-6, OBLIQUE_STEP_MM)
    uu, vv = np.meshgrid(u, u, indexing="xy")
    world = centre + uu[..., None] * e1 + vv[..., None] * e2
    idx = grid.lps_to_index(world.reshape(-1, 3)).T
    img = ndimage.map_coordinates(hu, idx, order=1, cval=-1024.0).reshape(uu.shape)
    return img.astype(np.float32), e1, e2


def render_report_png(
    path: Path,
    hu: F32,
    grid: Grid,
    points: Mapping[str, Point3],
    calcification: npt.NDArray[np.uint8] | None,
    calcification_grid: Grid | None,
    plane: AnnularPlane | None,
) -> Path:
    """Write the four-panel figure.

    Parameters
    ----------
    path
        The PNG to write.
    hu, grid
        The heart crop (HU) and its grid; shown in the canonical axis order (+L, +P, +S).
    points
        Placed landmarks, LPS mm.
    calcification, calcification_grid
        The calcification mask and its grid (any grid: it is sampled onto the crop), or None.
    plane
        The annular plane, or None when it could not be computed (the oblique panel then says so).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    canon = canonical_grid(grid)
    vol = np.asarray(resample_onto(hu, grid, canon, order=0, fill_value=-1024.0), dtype=np.float32)
    calc = None
    if calcification is not None and calcification_grid is not None:
        calc = np.asarray(resample_onto(calcification, calcification_grid, canon, order=0, fill_value=0))
    centre_mm = np.asarray(plane.centre_mm) if plane is not None else _centre_of(points, canon)
    c = np.clip(np.rint(canon.lps_to_index(centre_mm)).astype(int), 0, np.asarray(canon.shape) - 1)
    # signed distance to the annular plane, for the line it draws in each slice
    dist = None
    if plane is not None:
        ii, jj, kk = np.meshgrid(*(np.arange(n) for n in canon.shape), indexing="ij", sparse=True)
        o, s = np.asarray(canon.origin_lps_mm), np.asarray(canon.spacing_mm)  # canonical: axes along +L, +P, +S
        n = np.asarray(plane.normal)
        dist = (o[0] + ii * s[0] - centre_mm[0]) * n[0] + (o[1] + jj * s[1] - centre_mm[1]) * n[1]
        dist = dist + (o[2] + kk * s[2] - centre_mm[2]) * n[2]

    fig, axes = plt.subplots(2, 2, figsize=(9, 9), dpi=100)
    views = (("axial", 2, False), ("coronal", 1, True), ("sagittal", 0, True))
    idx_points = {name: canon.lps_to_index(np.asarray(p)) for name, p in points.items()}
    spacing = np.asarray(canon.spacing_mm)
    for ax, (title, axis, head_up) in zip(axes.flat, views, strict=False):
        take = [slice(None)] * 3
        take[axis] = c[axis]
        img = vol[tuple(take)].T
        ax.imshow(img, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], origin="lower" if head_up else "upper")
        if calc is not None and np.any(calc[tuple(take)]):
            overlay = np.ma.masked_equal(calc[tuple(take)].T.astype(float), 0)
            ax.imshow(overlay, cmap="autumn", alpha=0.8, origin="lower" if head_up else "upper")
        if dist is not None:
            d = np.broadcast_to(dist, canon.shape)[tuple(take)].T
            if d.min() < 0 < d.max():
                ax.contour(d, levels=[0.0], colors="cyan", linewidths=1.0)
        cols = [a for a in range(3) if a != axis]
        for name, ijk in idx_points.items():
            if abs(ijk[axis] - c[axis]) * spacing[axis] <= SLICE_TOLERANCE_MM:
                ax.plot(ijk[cols[0]], ijk[cols[1]], "o", ms=5, mfc="none", mec="yellow")
                ax.annotate(
                    name,
                    (ijk[cols[0]], ijk[cols[1]]),
                    color="yellow",
                    fontsize=8,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
        ax.set_title(title)
        ax.set_axis_off()
    ax = axes.flat[3]
    if plane is None:
        ax.text(0.5, 0.5, "annular plane not available\n(needs RCC, LCC, NCC)", ha="center", va="center")
    else:
        img, e1, e2 = _oblique(hu, grid, plane)
        extent = (-OBLIQUE_HALF_MM, OBLIQUE_HALF_MM, -OBLIQUE_HALF_MM, OBLIQUE_HALF_MM)
        ax.imshow(img, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], origin="lower", extent=extent)
        hinge = [np.asarray(points[n]) for n in ("RCC", "LCC", "NCC") if n in points]
        centre = np.asarray(plane.centre_mm)
        for name in ("RCC", "LCC", "NCC"):
            if name in points:
                d = np.asarray(points[name]) - centre
                ax.plot(d @ e1, d @ e2, "o", ms=5, mfc="none", mec="yellow")
                ax.annotate(
                    name, (d @ e1, d @ e2), color="yellow", fontsize=8, xytext=(4, 4), textcoords="offset points"
                )
        if hinge:
            radius = float(np.mean([np.linalg.norm(h - centre) for h in hinge]))
            t = np.linspace(0, 2 * np.pi, 200)
            ax.plot(radius * np.cos(t), radius * np.sin(t), "c-", lw=1.0)
    ax.set_title("annular plane (basal ring)")
    ax.set_axis_off()
    fig.suptitle("cardiofm prediction — research use, check before clinical use", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _centre_of(points: Mapping[str, Point3], grid: Grid) -> npt.NDArray[np.float64]:
    if points:
        return np.mean([np.asarray(p) for p in points.values()], axis=0)
    return np.asarray(grid.index_to_lps((np.asarray(grid.shape) - 1) / 2.0), dtype=np.float64)
