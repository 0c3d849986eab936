"""Header-only checks that a set of DICOM files forms one regular 3-D volume, and the grid it spans.

Everything here reads DICOM headers only (pixel data is deferred, never loaded) and raises
:class:`~cardiofm.errors.InputDataError` with a message that names the problem, the file (by name,
never by full path) where one is to blame, and what to do. No patient data ever enters a message.

The grid derived from the headers follows :mod:`cardiofm.imaging.geometry`: ``i`` runs along a DICOM
row (ImageOrientationPatient[:3]), ``j`` down the columns (ImageOrientationPatient[3:]) and ``k`` along
the slice normal ``row x column``, slices sorted by their position along that normal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from cardiofm.errors import ExternalToolError, InputDataError
from cardiofm.imaging.geometry import FloatArray, Grid, as_direction, as_point

logger = logging.getLogger(__name__)

#: Tag of PixelData.
_PIXEL_DATA = 0x7FE00010
#: Elements larger than this are not read (only their offset and length), bytes.
_DEFER_BYTES = 4096
#: Length field value of an element of undefined length (encapsulated pixel data).
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: Largest tolerated angle between the slice-to-slice direction and the slice normal, degrees.
MAX_TILT_DEG = 0.5
#: Largest tolerated relative deviation of a slice step from the series' typical step.
MAX_STEP_DEVIATION = 0.10
#: Fewest slices that make a volume.
MIN_SLICES = 3
#: Two orientation vectors (unit length) count as equal when no component differs by more than this.
_IOP_TOL = 1e-4
#: Largest tolerated departure of ImageOrientationPatient from orthonormal.
_ORTHO_TOL = 1e-3
#: Pixel spacings count as equal within this relative tolerance.
_PIXEL_SPACING_RTOL = 1e-4
#: Two slices closer than this along the normal are at the same position, mm.
_DUPLICATE_MM = 1e-3
#: In-plane offset of a slice from the line through the first and last slice that is tolerated, mm
#: (plus a tenth of the smaller pixel spacing).
_INPLANE_TOL_MM = 0.05
#: Spacing agreement (relative) and position agreement (mm) between header grid and NIfTI grid.
_GRID_SPACING_RTOL = 1e-3
_POSITION_TOL_MM = 0.01
#: Axes of two grids are parallel when |cos| exceeds this.
_PARALLEL_COS = 1 - 1e-4
#: Largest tolerated |cos| between two axes of a NIfTI affine (more is shear).
_SHEAR_COS = 1e-4


@dataclass(frozen=True)
class SliceHeader:
    """The geometry-relevant header of one single-frame DICOM image.

    Attributes
    ----------
    path:
        The file.
    series_uid:
        SeriesInstanceUID (never shown in messages).
    orientation:
        ImageOrientationPatient: LPS unit vectors of the row and the column direction.
    position:
        ImagePositionPatient: LPS centre of the first transmitted pixel, mm.
    rows, columns:
        Image matrix.
    pixel_spacing:
        PixelSpacing: (between rows, between columns), mm.
    dataset:
        The header as read (pixel data not loaded); used for the sidecar.
    """

    path: Path
    series_uid: str
    orientation: tuple[float, float, float, float, float, float]
    position: tuple[float, float, float]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    dataset: Dataset = field(repr=False, compare=False)


def _floats(ds: Dataset, keyword: str, count: int, name: str) -> tuple[float, ...]:
    """Read a multi-valued numeric element as exactly ``count`` finite floats."""
    value = ds.get(keyword)
    if value is None or value == "":
        raise InputDataError(f"{name} has no {keyword}; it is not a slice of a CT volume (or its header is cut short)")
    try:
        values = tuple(float(v) for v in value) if isinstance(value, MultiValue | list | tuple) else (float(value),)
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"{name} has a malformed {keyword}") from exc
    if len(values) != count or not all(np.isfinite(values)):
        raise InputDataError(f"{name} has a malformed {keyword}: expected {count} finite numbers")
    return values


def _check_pixel_data(ds: Dataset, path: Path) -> None:
    """Raise if the pixel data extends past the end of the file or is shorter than the image needs."""
    name = path.name
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    length = getattr(raw, "length", None)
    value_tell = getattr(raw, "value_tell", None)
    if length is None or value_tell is None or length == _UNDEFINED_LENGTH:
        return  # already read (small) or encapsulated; dcm2niix and the output checks catch the rest
    if value_tell + length > path.stat().st_size:
        raise InputDataError(
            f"{name} is truncated: its pixel data needs {length} bytes but the file ends "
            f"{value_tell + length - path.stat().st_size} bytes short; copy the series again from the source"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
    if length < expected * frames:
        raise InputDataError(
            f"{name} holds {length} bytes of pixel data, fewer than its {expected * frames} pixels need"
        )


def read_slice_header(path: Path) -> SliceHeader:
    """Read and sanity-check the header of one DICOM slice (pixel data is not loaded).

    Raises
    ------
    InputDataError
        If the file is missing, not DICOM, truncated, multi-frame or lacks geometry elements.
    """
    name = path.name
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
    except FileNotFoundError as exc:
        raise InputDataError(f"{name} does not exist") from exc
    except InvalidDicomError as exc:
        raise InputDataError(f"{name} is not a DICOM file (or is truncated before its header)") from exc
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise InputDataError(f"{name} cannot be read as DICOM ({type(exc).__name__}); it may be truncated") from exc
    if _PIXEL_DATA not in ds:
        raise InputDataError(f"{name} has no pixel data: the file is truncated or is not an image")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise InputDataError(
                f"{name} is a multi-frame image ({frames} frames); only single-frame CT series are supported, "
                "export the series as classic single-frame images"
            )
        iop = _floats(ds, "ImageOrientationPatient", 6, name)
        ipp = _floats(ds, "ImagePositionPatient", 3, name)
        spacing = _floats(ds, "PixelSpacing", 2, name)
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        series_uid = str(ds.get("SeriesInstanceUID", ""))
        if rows <= 0 or columns <= 0 or "BitsAllocated" not in ds:
            raise InputDataError(f"{name} lacks Rows, Columns or BitsAllocated; the file is truncated or not an image")
        if min(spacing) <= 0:
            raise InputDataError(f"{name} has a non-positive PixelSpacing {spacing}")
        _check_pixel_data(ds, path)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputDataError(f"{name} has a malformed header ({type(exc).__name__}); it may be truncated") from exc
    return SliceHeader(
        path=path,
        series_uid=series_uid,
        orientation=(iop[0], iop[1], iop[2], iop[3], iop[4], iop[5]),
        position=(ipp[0], ipp[1], ipp[2]),
        rows=rows,
        columns=columns,
        pixel_spacing=(spacing[0], spacing[1]),
        dataset=ds,
    )


def _orthonormal_axes(iop: tuple[float, ...], name: str) -> FloatArray:
    """Columns: row direction, column direction, slice normal (an exactly orthonormal 3×3 matrix)."""
    r, c = np.asarray(iop[:3]), np.asarray(iop[3:])
    if abs(np.linalg.norm(r) - 1) > _ORTHO_TOL or abs(np.linalg.norm(c) - 1) > _ORTHO_TOL or abs(r @ c) > _ORTHO_TOL:
        raise InputDataError(f"{name} has an ImageOrientationPatient that is not two perpendicular unit vectors")
    m = np.column_stack([r, c, np.cross(r, c)])
    u, _, vt = np.linalg.svd(m)
    return u @ vt


def _check_uniform(headers: Sequence[SliceHeader]) -> None:
    """One series, one orientation, one matrix size and pixel spacing, enough slices."""
    n_series = len({h.series_uid for h in headers})
    if n_series > 1:
        raise InputDataError(
            f"the files belong to {n_series} different series (SeriesInstanceUID); convert one series at a time"
        )
    distinct: list[FloatArray] = []
    for h in headers:
        iop = np.asarray(h.orientation)
        if not any(np.max(np.abs(iop - d)) <= _IOP_TOL for d in distinct):
            distinct.append(iop)
    if len(distinct) > 1:
        raise InputDataError(
            f"series mixes {len(distinct)} orientations (ImageOrientationPatient), e.g. a localizer or a "
            "reformat among the axial images; pass only the images of one orientation"
        )
    first = headers[0]
    for h in headers[1:]:
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise InputDataError(
                f"{h.path.name} is {h.rows}x{h.columns} pixels but {first.path.name} is "
                f"{first.rows}x{first.columns}; all slices of a volume need the same matrix size"
            )
        if not np.allclose(h.pixel_spacing, first.pixel_spacing, rtol=_PIXEL_SPACING_RTOL, atol=0.0):
            raise InputDataError(
                f"{h.path.name} has PixelSpacing {h.pixel_spacing} mm but {first.path.name} has "
                f"{first.pixel_spacing} mm; all slices of a volume need the same pixel spacing"
            )
    if len(headers) < MIN_SLICES:
        raise InputDataError(f"series has {len(headers)} slice(s); at least {MIN_SLICES} are needed to form a volume")


def _check_positions(ordered: Sequence[SliceHeader], along: FloatArray, axes: FloatArray) -> float:
    """Check duplicates, gantry tilt and slice spacing; return the mean step along the normal (mm)."""
    steps = np.diff(along)
    for m, step in enumerate(steps):
        if step < _DUPLICATE_MM:
            raise InputDataError(
                f"duplicate slice positions: {ordered[m].path.name} and {ordered[m + 1].path.name} lie at the "
                f"same position ({along[m]:.3f} mm along the slice normal); the files hold repeated or "
                "overlapping images, pass one reconstruction only"
            )
    positions = np.asarray([h.position for h in ordered])
    total = positions[-1] - positions[0]
    normal = axes[:, 2]
    tilt = float(np.degrees(np.arccos(np.clip(abs(total @ normal) / np.linalg.norm(total), -1.0, 1.0))))
    if tilt > MAX_TILT_DEG:
        raise InputDataError(
            f"gantry tilt of {tilt:.2f} degrees: slice positions are not stacked along the slice normal "
            f"(at most {MAX_TILT_DEG} degrees is accepted); ask for a reconstruction without gantry tilt "
            "(tilt-corrected / re-formatted axial images) on the scanner"
        )
    t = np.linspace(0.0, 1.0, len(ordered))[:, None]
    residual = positions - (positions[0] + t * total)
    inplane = np.linalg.norm(residual - np.outer(residual @ normal, normal), axis=1)
    worst = int(np.argmax(inplane))
    if inplane[worst] > _INPLANE_TOL_MM + 0.1 * min(ordered[0].pixel_spacing):
        raise InputDataError(
            f"slice positions do not lie on one line: {ordered[worst].path.name} is shifted in-plane by "
            f"{inplane[worst]:.2f} mm; the files do not form one regular volume"
        )
    expected = float(np.median(steps))
    for m, step in enumerate(steps):
        if step > expected * (1 + MAX_STEP_DEVIATION):
            raise InputDataError(
                f"missing slice(s): gap of {step:.3f} mm between positions {along[m]:.3f} and {along[m + 1]:.3f} mm "
                f"(along the slice normal), expected {expected:.3f} mm; about {round(step / expected) - 1} slice(s) "
                "are missing, transfer the complete series"
            )
        if step < expected * (1 - MAX_STEP_DEVIATION):
            raise InputDataError(
                f"uneven slice spacing: step of {step:.3f} mm between positions {along[m]:.3f} and "
                f"{along[m + 1]:.3f} mm (along the slice normal), expected {expected:.3f} mm"
            )
    return float((along[-1] - along[0]) / (len(along) - 1))


def series_grid(headers: Sequence[SliceHeader]) -> tuple[Grid, list[SliceHeader]]:
    """Validate that slice headers form one regular volume and return its grid.

    Parameters
    ----------
    headers:
        One header per file, in any order.

    Returns
    -------
    tuple
        The grid (``i`` along rows, ``j`` down columns, ``k`` along the slice normal, origin at the
        first slice's ImagePositionPatient) and the headers sorted along the normal.

    Raises
    ------
    InputDataError
        For mixed series or orientations, differing matrix sizes or pixel spacings, too few slices,
        duplicate positions, gantry tilt, non-collinear positions, missing slices or uneven spacing.
    """
    if not headers:
        raise InputDataError("no DICOM files were given")
    _check_uniform(headers)
    axes = _orthonormal_axes(headers[0].orientation, headers[0].path.name)
    along_unsorted = np.asarray([h.position for h in headers]) @ axes[:, 2]
    order = np.argsort(along_unsorted, kind="stable")
    ordered = [headers[int(m)] for m in order]
    along = along_unsorted[order]
    step = _check_positions(ordered, along, axes)
    first = ordered[0]
    grid = Grid(
        shape=(first.columns, first.rows, len(ordered)),
        spacing_mm=(first.pixel_spacing[1], first.pixel_spacing[0], step),
        origin_lps_mm=as_point(first.position),
        direction=as_direction(axes),
    )
    logger.debug("series grid %s, spacing %s mm", grid.shape, tuple(round(s, 4) for s in grid.spacing_mm))
    return grid, ordered


def grid_from_affine(affine_ras: npt.ArrayLike, shape: tuple[int, int, int], name: str) -> Grid:
    """Grid of a NIfTI (RAS) affine (see :meth:`Grid.from_affine_ras`).

    Raises
    ------
    InputDataError
        If the affine is non-finite, has a zero spacing or shear (``name`` is used in the message).
    """
    try:
        return Grid.from_affine_ras(affine_ras, shape)
    except ValueError as exc:
        raise InputDataError(f"{name} has a {exc}; resample it onto an orthogonal grid first") from exc


def check_grids_agree(expected: Grid, actual: Grid, log_tail: str = "") -> None:
    """Check that a converted volume's grid covers the header grid voxel for voxel.

    Axes may be permuted or flipped; spacings must agree within 0.1 % and the corner voxels of the
    first and last slice within 0.01 mm.

    Raises
    ------
    ExternalToolError
        On any disagreement (the converter misread a series that passed the header checks).
    """
    e_dir, a_dir = expected.direction_matrix, actual.direction_matrix
    for a in range(3):
        cos = np.abs(e_dir.T @ a_dir[:, a])
        e = int(np.argmax(cos))
        ok = cos[e] > _PARALLEL_COS and actual.shape[a] == expected.shape[e]
        if not ok or abs(actual.spacing_mm[a] - expected.spacing_mm[e]) > _GRID_SPACING_RTOL * expected.spacing_mm[e]:
            raise ExternalToolError(
                f"dcm2niix output geometry disagrees with the DICOM headers: axis {a} has {actual.shape[a]} voxels "
                f"of {actual.spacing_mm[a]:.4f} mm; headers give shape {expected.shape}, spacing "
                f"{tuple(round(s, 4) for s in expected.spacing_mm)} mm",
                log_tail=log_tail,
            )
    nk = expected.shape[2] - 1
    ni, nj = expected.shape[0] - 1, expected.shape[1] - 1
    centres = expected.index_to_lps([[0, 0, 0], [ni, nj, 0], [0, 0, nk], [ni, nj, nk]])
    idx = np.rint(actual.lps_to_index(centres))
    distance = np.linalg.norm(actual.index_to_lps(idx) - centres, axis=1)
    if (
        bool((idx < 0).any())
        or bool((idx >= np.asarray(actual.shape)).any())
        or float(distance.max()) > _POSITION_TOL_MM
    ):
        raise ExternalToolError(
            f"dcm2niix output places the first/last slice {float(distance.max()):.3f} mm away from the "
            f"positions in the DICOM headers (tolerance {_POSITION_TOL_MM} mm)",
            log_tail=log_tail,
        )
