"""Step ``convert``: one DICOM CT series to an integer-HU NIfTI volume and a privacy-filtered JSON sidecar.

The series geometry is validated from the headers first (:mod:`cardiofm.dicom.geometry_checks`), so
a broken series fails with a clear :class:`~cardiofm.errors.InputDataError` before any conversion.
Only then are exactly the given files linked into a private temporary folder and converted by the
real ``dcm2niix`` binary; its output is checked against the header geometry, rescaled to Hounsfield
units and written to ``out_dir`` (nothing is written there unless every check passed).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from cardiofm.dicom.geometry_checks import check_grids_agree, grid_from_affine, read_slice_header, series_grid
from cardiofm.errors import ConfigError, ExternalToolError, InputDataError, MissingResourceError
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.nifti import save_nifti

logger = logging.getLogger(__name__)

#: Default limit on one dcm2niix run, seconds.
DEFAULT_TIMEOUT_S = 600.0
#: DICOM keywords copied into the sidecar; everything else (names, ids, UIDs, dates, times,
#: institution, free-text descriptions, device serials) is dropped.
SIDECAR_KEYWORDS: tuple[str, ...] = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "ImageType",
    "BodyPartExamined",
    "PatientPosition",
    "SliceThickness",
    "ConvolutionKernel",
    "FilterType",
    "KVP",
    "XRayTubeCurrent",
    "ExposureTime",
    "Exposure",
    "CTDIvol",
    "SpiralPitchFactor",
    "SingleCollimationWidth",
    "TotalCollimationWidth",
    "RevolutionTime",
    "ReconstructionDiameter",
    "DataCollectionDiameter",
    "GantryDetectorTilt",
    "NominalPercentageOfCardiacPhase",
    "TriggerTime",
    "RescaleType",
)
#: Output names: no path separators, no dcm2niix ``%`` placeholders, no leading dot.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_VERSION_RE = re.compile(r"version\s+(v[0-9][\w.\-]*)")
#: Lines of tool output kept for error messages.
_TAIL_LINES = 20
_INT16 = np.iinfo(np.int16)
#: Slices converted to HU per block.
_SLAB = 16


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_series` wrote.

    Attributes
    ----------
    nifti_path, sidecar_path:
        ``out_dir/<name>.nii.gz`` (``.nii`` uncompressed; integer voxels whose NIfTI scaling gives HU) and
        ``out_dir/<name>.json``.
    grid:
        Grid of the written NIfTI (array layout as dcm2niix wrote it).
    shape, spacing_mm:
        ``grid.shape`` and ``grid.spacing_mm``.
    orientation:
        nibabel axis codes of the array axes, e.g. ``"LAS"`` (i towards Left, j Anterior, k Superior).
    dcm2niix_version:
        Version string reported by dcm2niix, e.g. ``"v1.0.20260724"``.
    seconds, dcm2niix_seconds:
        Wall time of the whole conversion and of the dcm2niix run alone.
    """

    nifti_path: Path
    sidecar_path: Path
    grid: Grid
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    orientation: str
    dcm2niix_version: str
    seconds: float
    dcm2niix_seconds: float


def find_dcm2niix() -> Path:
    """Locate the dcm2niix binary: PATH, next to the Python interpreter, or the ``dcm2niix`` package.

    Raises
    ------
    MissingResourceError
        If none is found.
    """
    found = shutil.which("dcm2niix")
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / "dcm2niix"
    if beside.is_file():
        return beside
    try:
        import dcm2niix

        packaged = Path(dcm2niix.bin_path)
    except (ImportError, AttributeError):
        packaged = None
    if packaged is not None and packaged.is_file():
        return packaged
    raise MissingResourceError(
        "dcm2niix not found on PATH, next to the Python interpreter or in the dcm2niix Python package; "
        "install it with `pip install dcm2niix` (or the distribution package dcm2niix)"
    )


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-_TAIL_LINES:])


def _run_dcm2niix(
    exe: Path, in_dir: Path, out_dir: Path, name: str, timeout_s: float, compress: bool
) -> tuple[str, str]:
    """Run dcm2niix on ``in_dir`` (gzip output when ``compress``); return (version, combined output)."""
    gz = "y" if compress else "n"
    args = [str(exe), "-z", gz, "-b", "y", "-ba", "y", "-f", name, "-o", str(out_dir), str(in_dir)]
    try:
        run = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise ExternalToolError(f"dcm2niix did not finish within {timeout_s:g} s", log_tail=_tail(out)) from exc
    except OSError as exc:
        raise ExternalToolError(f"dcm2niix could not be started ({type(exc).__name__}: {exc.strerror})") from exc
    log = f"{run.stdout}\n{run.stderr}"
    if run.returncode != 0:
        raise ExternalToolError(f"dcm2niix failed with exit code {run.returncode}", log_tail=_tail(log))
    match = _VERSION_RE.search(log)
    return (match.group(1) if match else ""), log


def _version_from_json(path: Path) -> str:
    """ConversionSoftwareVersion from the dcm2niix BIDS sidecar ("" when absent or unreadable)."""
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("ConversionSoftwareVersion", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _load_checked(path: Path) -> tuple[nib.Nifti1Image, Grid]:
    """Load a NIfTI header and check dimensionality, spacing and shear (not yet the values)."""
    name = path.name
    try:
        img = nib.load(str(path))
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise InputDataError(f"cannot read NIfTI file {name} ({type(exc).__name__})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputDataError(f"{name} is not a NIfTI image")
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputDataError(f"{name} has {len(shape)} dimensions {shape}; expected a 3-D volume")
    zooms = [float(z) for z in img.header["pixdim"][1:4]]
    if any(not np.isfinite(z) or z <= 0 for z in zooms):
        raise InputDataError(f"{name} has a zero or negative voxel spacing {tuple(zooms)} mm")
    return img, grid_from_affine(img.affine, (shape[0], shape[1], shape[2]), name)


def _read_voxels(img: nib.Nifti1Image, slices: slice, name: str) -> npt.NDArray[Any]:
    """Scaled voxel values of the given range of k (a truncated or corrupt file raises InputDataError)."""
    try:
        return np.asanyarray(img.dataobj[:, :, slices])
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise InputDataError(
            f"cannot read the voxel data of {name} ({type(exc).__name__}); the file is truncated or corrupt"
        ) from exc


def _hu_int16(img: nib.Nifti1Image, shape: tuple[int, int, int], name: str) -> npt.NDArray[np.int16]:
    """Scaled voxel values as int16 HU (rounded; values beyond int16 are clipped with a warning)."""
    out = np.empty(shape, dtype=np.int16)
    clipped = 0
    for k0 in range(0, shape[2], _SLAB):
        slab = _read_voxels(img, slice(k0, k0 + _SLAB), name).astype(np.float64).reshape(shape[0], shape[1], -1)
        if not bool(np.isfinite(slab).all()):
            raise InputDataError(f"{name} contains NaN or infinite voxel values")
        np.rint(slab, out=slab)
        clipped += int(np.count_nonzero((slab < _INT16.min) | (slab > _INT16.max)))
        out[:, :, k0 : k0 + _SLAB] = np.clip(slab, _INT16.min, _INT16.max)
    if clipped:
        logger.warning(
            "%d voxel(s) outside the int16 range were clipped to [%d, %d] HU", clipped, _INT16.min, _INT16.max
        )
    return out


def validate_nifti(path: Path) -> Grid:
    """Check that a NIfTI file holds a usable 3-D volume and return its grid.

    Raises
    ------
    InputDataError
        If the file cannot be read, is not 3-D, has zero/negative spacing, a sheared affine, or NaN or
        infinite values. Messages name the file, never its full path.
    """
    img, grid = _load_checked(Path(path))
    data = _read_voxels(img, slice(None), Path(path).name)
    if np.issubdtype(data.dtype, np.inexact):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputDataError(f"{Path(path).name} contains {bad} NaN or infinite voxel value(s)")
    return grid


def _json_value(value: Any) -> Any:
    """A DICOM value as JSON (None when it is empty or not a plain number/string)."""
    if isinstance(value, MultiValue | list | tuple):
        items = [_json_value(v) for v in value]
        return items if items and all(v is not None for v in items) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if not np.isfinite(number):
            return None
        return int(value) if isinstance(value, int) else number
    if isinstance(value, str):
        text = value.strip()
        return text or None
    return None


def build_sidecar(header: Dataset, grid: Grid, version: str) -> dict[str, Any]:
    """Whitelisted, non-identifying acquisition fields of ``header`` plus the measured geometry."""
    sidecar: dict[str, Any] = {}
    for keyword in SIDECAR_KEYWORDS:
        value = _json_value(header.get(keyword))
        if value is not None:
            sidecar[keyword] = value
    sidecar["PixelSpacing"] = [grid.spacing_mm[1], grid.spacing_mm[0]]
    sidecar["SpacingBetweenSlices"] = round(grid.spacing_mm[2], 6)
    sidecar["ConversionSoftware"] = "dcm2niix"
    sidecar["ConversionSoftwareVersion"] = version
    return sidecar


def _stage_inputs(files: Sequence[Path], in_dir: Path) -> None:
    """Symlink (or copy, where links are not possible) exactly the given files into ``in_dir``."""
    for n, src in enumerate(files):
        dst = in_dir / f"slice{n:06d}.dcm"
        try:
            os.symlink(src.resolve(), dst)
        except OSError:
            shutil.copyfile(src, dst)


def _write_outputs(
    out_dir: Path,
    name: str,
    data: npt.NDArray[np.int16] | Path,
    grid: Grid,
    sidecar: dict[str, Any],
    suffix: str,
) -> tuple[Path, Path]:
    """Write both outputs under temporary names, then move them into place.

    ``data`` is either the voxels to save or a ready NIfTI file with ``suffix`` (dcm2niix's own integer
    output) to move.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    nifti, side = out_dir / f"{name}{suffix}", out_dir / f"{name}.json"
    part_nifti, part_side = out_dir / f".{name}.part{suffix}", out_dir / f".{name}.json.part"
    try:
        if isinstance(data, Path):
            shutil.move(data, part_nifti)
        else:
            save_nifti(part_nifti, data, grid)
        part_side.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(part_nifti, nifti)
        os.replace(part_side, side)
    finally:
        part_nifti.unlink(missing_ok=True)
        part_side.unlink(missing_ok=True)
    return nifti, side


def convert_series(
    files: Sequence[Path],
    out_dir: Path,
    *,
    name: str = "image",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    compress: bool = True,
) -> ConversionResult:
    """Convert one single-frame DICOM CT series to ``out_dir/<name>.nii.gz`` (integer HU) and ``<name>.json``.

    Parameters
    ----------
    files:
        The series' files, in any order; exactly these are converted.
    out_dir:
        Output folder (created when needed). Nothing is written to it unless the conversion succeeds.
    name:
        Base name of the outputs: letters, digits, ``_`` and ``-``.
    timeout_s:
        Limit on the dcm2niix run, seconds.
    compress:
        Write ``<name>.nii.gz``; False writes ``<name>.nii`` (gzip is most of dcm2niix's run time at full
        size, and an intermediate that the next step reads at once need not be compressed).

    Returns
    -------
    ConversionResult

    Raises
    ------
    ConfigError
        If ``name`` is not a plain base name.
    InputDataError
        If a file is unreadable or truncated, or the files do not form one regular volume (see
        :func:`~cardiofm.dicom.geometry_checks.series_grid`), or dcm2niix split them into several volumes.
    MissingResourceError
        If dcm2niix is not installed.
    ExternalToolError
        If dcm2niix fails, produces nothing, or its output disagrees with the header geometry.
    """
    start = time.perf_counter()
    if not _NAME_RE.match(name):
        raise ConfigError(f"output name {name!r} must be 1-64 letters, digits, '_' or '-' (starting alphanumeric)")
    paths = [Path(f) for f in files]
    expected, ordered = series_grid([read_slice_header(p) for p in paths])
    exe = find_dcm2niix()
    with tempfile.TemporaryDirectory(prefix="cardiofm-convert-") as tmp:
        in_dir, tool_out = Path(tmp, "in"), Path(tmp, "out")
        in_dir.mkdir()
        tool_out.mkdir()
        _stage_inputs(paths, in_dir)
        tool_start = time.perf_counter()
        version, log = _run_dcm2niix(exe, in_dir, tool_out, name, timeout_s, compress)
        tool_seconds = time.perf_counter() - tool_start
        produced = sorted(p for p in tool_out.iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if not produced:
            raise ExternalToolError("dcm2niix finished but wrote no NIfTI file", log_tail=_tail(log))
        if len(produced) > 1:
            raise InputDataError(
                f"dcm2niix split the series into {len(produced)} volumes ({', '.join(p.name for p in produced)}); "
                "the files do not form a single volume"
            )
        version = version or _version_from_json(tool_out / f"{name}.json")
        img, grid = _load_checked(produced[0])
        check_grids_agree(expected, grid, _tail(log))
        # dcm2niix's integer output (stored values + scl_slope/scl_inter = HU) cannot hold NaN and is
        # kept as written; anything else is checked voxel by voxel and rewritten as int16 HU
        stored = img.get_data_dtype()  # type: ignore[no-untyped-call]
        suffix = ".nii.gz" if compress else ".nii"
        integer = np.issubdtype(stored, np.integer) and produced[0].name.endswith(suffix)
        data = produced[0] if integer else _hu_int16(img, grid.shape, produced[0].name)
        sidecar = build_sidecar(ordered[0].dataset, expected, version or "unknown")
        del img  # an uncompressed file may be memory-mapped; release it before the move
        nifti, side = _write_outputs(Path(out_dir), name, data, grid, sidecar, suffix)
    orientation = "".join(nib.aff2axcodes(grid.affine_ras))  # type: ignore[no-untyped-call]
    seconds = time.perf_counter() - start
    logger.info(
        "converted %d slices to %s (%s, %s) in %.2f s (dcm2niix %.2f s)",
        len(paths),
        nifti.name,
        "x".join(str(n) for n in grid.shape),
        orientation,
        seconds,
        tool_seconds,
    )
    return ConversionResult(
        nifti_path=nifti,
        sidecar_path=side,
        grid=grid,
        shape=grid.shape,
        spacing_mm=grid.spacing_mm,
        orientation=orientation,
        dcm2niix_version=version or "unknown",
        seconds=seconds,
        dcm2niix_seconds=tool_seconds,
    )
