"""Types and helpers shared by the annotation readers and writers (internal)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeAlias

from cardiofm.contracts.landmarks import Point3
from cardiofm.errors import LabelError
from cardiofm.imaging.geometry import FloatArray, lps_to_ras, ras_to_lps

#: One entry of an annotation file: ``(label as written in the file, LPS position in mm)``. The position is
#: ``None`` where the file holds the label but no position (e.g. a Slicer point that was never placed).
RawPoint: TypeAlias = tuple[str, Point3 | None]

#: What writers accept: ``{site label: LPS mm}`` or a sequence of ``(site label, LPS mm)`` pairs (pairs may repeat
#: a label, so writers can also produce defective files for tests). ``None`` writes a label without a position
#: where the format can express that.
PointsLike: TypeAlias = Mapping[str, Point3 | None] | Iterable[tuple[str, Point3 | None]]

#: Annotation files are small; anything larger than this is refused before parsing.
MAX_FILE_BYTES = 32 * 1024 * 1024


def as_pairs(points: PointsLike) -> list[RawPoint]:
    """Normalize writer input to a list of ``(label, xyz | None)`` pairs, keeping order and repeats."""
    items = points.items() if isinstance(points, Mapping) else points
    pairs: list[RawPoint] = []
    for label, xyz in items:
        if xyz is None:
            pairs.append((str(label), None))
            continue
        if len(xyz) != 3:
            raise ValueError(f"point {label!r} must have 3 coordinates (x, y, z in mm), got {len(xyz)}")
        pairs.append((str(label), (float(xyz[0]), float(xyz[1]), float(xyz[2]))))
    return pairs


def file_error(path: Path | str, problem: str, action: str) -> LabelError:
    """Build a :class:`LabelError` naming only the file's name (never its directories, which may identify a patient).

    Parameters
    ----------
    path:
        The annotation file.
    problem:
        What is wrong, e.g. ``"is not valid XML (line 3)"``.
    action:
        What the user should do about it.
    """
    return LabelError(f"annotation file '{Path(path).name}' {problem}; {action}")


def read_bytes(path: Path | str) -> bytes:
    """Read an annotation file, refusing missing and oversized files with a :class:`LabelError`."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise file_error(
                p, f"is {size} bytes, more than the {MAX_FILE_BYTES} allowed for an annotation file", "check the file"
            )
        return p.read_bytes()
    except OSError as exc:
        raise file_error(p, f"cannot be read ({exc.strerror or type(exc).__name__})", "check that it exists") from None


def format_float(value: float) -> str:
    """Shortest text that reads back as exactly the same float (``repr``), e.g. ``'12.5'``, ``'-0.001'``, ``'nan'``."""
    return repr(float(value))


def point_to_lps(xyz: Point3, coordinate_system: str) -> Point3:
    """Convert a point given in ``coordinate_system`` (``"LPS"`` or ``"RAS"``) to LPS mm."""
    if coordinate_system == "LPS":
        return xyz
    if coordinate_system == "RAS":
        return to_point3(ras_to_lps(xyz))
    raise ValueError(f"coordinate system must be 'LPS' or 'RAS', got {coordinate_system!r}")


def point_from_lps(xyz: Point3, coordinate_system: str) -> Point3:
    """Convert an LPS mm point to ``coordinate_system`` (``"LPS"`` or ``"RAS"``)."""
    if coordinate_system == "LPS":
        return xyz
    if coordinate_system == "RAS":
        return to_point3(lps_to_ras(xyz))
    raise ValueError(f"coordinate system must be 'LPS' or 'RAS', got {coordinate_system!r}")


def to_point3(values: Iterable[float] | FloatArray) -> Point3:
    """Turn three numbers (list, tuple or array) into a ``(x, y, z)`` tuple of Python floats."""
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def is_finite(xyz: Point3) -> bool:
    """Tell whether all three coordinates are finite numbers."""
    return all(math.isfinite(v) for v in xyz)
