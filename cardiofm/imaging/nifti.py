"""NIfTI read/write bound to :class:`~cardiofm.imaging.geometry.Grid` (RAS affines handled by the grid)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt

from cardiofm.errors import InputDataError
from cardiofm.imaging.geometry import Grid


def save_nifti(path: Path, array: npt.NDArray[np.generic], grid: Grid) -> Path:
    """Write ``array`` (indexed ``[i, j, k]``, shape ``grid.shape``) with the grid's RAS affine."""
    if tuple(array.shape) != tuple(grid.shape):
        raise InputDataError(f"array shape {array.shape} does not match grid shape {grid.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), grid.affine_ras)
    img.set_qform(grid.affine_ras, code=1)
    img.set_sform(grid.affine_ras, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def _scaled_float32(proxy: object) -> npt.NDArray[np.float32]:
    """Stored values × scl_slope + scl_inter, computed in place in float32 (nibabel's own scaling is slower)."""
    raw = np.asanyarray(proxy.get_unscaled())  # type: ignore[attr-defined]
    out = raw.astype(np.float32)
    slope = float(getattr(proxy, "slope", 1.0))
    inter = float(getattr(proxy, "inter", 0.0))
    if np.isfinite(slope) and slope not in (0.0, 1.0):
        out *= np.float32(slope)
    if np.isfinite(inter) and inter != 0.0:
        out += np.float32(inter)
    return out


def load_nifti(path: Path, *, float32: bool = False) -> tuple[npt.NDArray[np.generic], Grid]:
    """Read a 3-D NIfTI as (array indexed ``[i, j, k]``, grid); 4-D or unreadable files raise InputDataError.

    ``float32=True`` applies the NIfTI scaling directly in float32 (half the memory of the default,
    which lets nibabel choose, typically float64 for scaled integers).
    """
    try:
        img = nib.load(str(path))
        proxy = img.dataobj  # type: ignore[attr-defined]
        data = _scaled_float32(proxy) if float32 else np.asarray(proxy)
        affine = img.affine  # type: ignore[attr-defined]
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise InputDataError(
            f"cannot read NIfTI file {path.name} ({type(exc).__name__}); check that it is a complete .nii/.nii.gz"
        ) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputDataError(f"{path.name} has {data.ndim} dimensions; expected a 3-D volume")
    try:
        return data, Grid.from_affine_ras(affine, data.shape)
    except ValueError as exc:
        raise InputDataError(f"{path.name} has a {exc}") from exc


def read_grid(path: Path) -> Grid:
    """The grid of a NIfTI file from its header alone (no voxel data is read)."""
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)  # type: ignore[attr-defined]
        affine = img.affine  # type: ignore[attr-defined]
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise InputDataError(f"cannot read NIfTI header of {path.name} ({type(exc).__name__})") from exc
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputDataError(f"{path.name} has {len(shape)} dimensions; expected a 3-D volume")
    try:
        return Grid.from_affine_ras(affine, shape)
    except ValueError as exc:
        raise InputDataError(f"{path.name} has a {exc}") from exc
