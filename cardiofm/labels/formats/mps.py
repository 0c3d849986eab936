"""MITK point sets (``.mps``, XML ``point_set_file`` version 0.1).

MITK world coordinates are DICOM patient coordinates (LPS, mm). A point set stores points as integer ids only,
so the reader keys points by ``str(id)`` and the site's label map (e.g. the ``"numeric"`` or ``"zero_based"``
convention) gives them canonical names. The file's ``Geometry3D`` (index-to-world matrix and offset) is applied,
as MITK does. The writer writes an identity geometry (stored coordinates are world coordinates) unless it is
given the image's :class:`~cardiofm.imaging.geometry.Grid`: then the geometry is the image's (matrix = direction
times spacing, offset = origin) and the stored coordinates are continuous voxel indices on that grid.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cardiofm.imaging.geometry import FloatArray, Grid
from cardiofm.labels.formats._common import (
    PointsLike,
    RawPoint,
    as_pairs,
    file_error,
    format_float,
    read_bytes,
    to_point3,
)

logger = logging.getLogger(__name__)

_FILE_VERSION = "0.1"
#: DTDs allow entity expansion ("billion laughs") and external entities; annotation files never need them.
_DTD_PATTERN = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_RESAVE = "re-save the point set from MITK (File > Save) or fix the file"


def write_mps(
    path: Path | str, points: PointsLike, id_of: Mapping[str, int] | None = None, geometry: Grid | None = None
) -> Path:
    """Write a single-time-step MITK point set.

    Parameters
    ----------
    path:
        Output file (conventionally ``*.mps``); parent folders are created.
    points:
        ``{site label: (x, y, z)}`` or ``(label, xyz)`` pairs, LPS mm. ``None`` positions cannot be expressed in
        MITK and are refused.
    id_of:
        Integer point id of each label. Default: the label itself read as an integer (``"3"`` → id 3), which
        suits the ``"numeric"`` and ``"zero_based"`` conventions.
    geometry:
        The grid of the image the points belong to: written as the point set's ``Geometry3D`` (MITK then shows
        the image's geometry), with the points stored as voxel indices on it. Default: identity geometry.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        If a label has no id, an id is negative or used twice, or a point has no position.
    """
    out = Path(path)
    entries: list[tuple[int, tuple[float, float, float]]] = []
    for label, xyz in as_pairs(points):
        if xyz is None:
            raise ValueError(f"MITK point sets cannot hold a point without a position (label {label!r})")
        entries.append((_id_for(label, id_of), xyz))
    ids = [pid for pid, _ in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"MITK point ids must be unique, got {ids}")

    root = ET.Element("point_set_file")
    ET.SubElement(root, "file_version").text = _FILE_VERSION
    series = ET.SubElement(ET.SubElement(root, "point_set"), "time_series")
    ET.SubElement(series, "time_series_id").text = "0"
    geometry_el = ET.SubElement(series, "Geometry3D", ImageGeometry="false", FrameOfReferenceID="0")
    coords = np.array([xyz for _, xyz in entries], dtype=np.float64).reshape(-1, 3)
    if geometry is None:
        matrix = {f"m_{r}_{c}": ("1" if r == c else "0") for r in range(3) for c in range(3)}
        offset = {"x": "0", "y": "0", "z": "0"}
    else:
        index_to_world = geometry.affine_lps
        matrix = {f"m_{r}_{c}": format_float(index_to_world[r, c]) for r in range(3) for c in range(3)}
        offset = {a: format_float(v) for a, v in zip("xyz", geometry.origin_lps_mm, strict=True)}
        coords = geometry.lps_to_index(coords).reshape(-1, 3)
        entries = [(pid, to_point3(local)) for (pid, _), local in zip(entries, coords, strict=True)]
    ET.SubElement(geometry_el, "IndexToWorld", {"type": "Matrix3x3", **matrix})
    ET.SubElement(geometry_el, "Offset", {"type": "Vector3D", **offset})
    lo = coords.min(axis=0) if len(coords) else np.zeros(3)
    hi = coords.max(axis=0) if len(coords) else np.zeros(3)
    bounds = ET.SubElement(geometry_el, "Bounds")
    for tag, corner in (("Min", lo), ("Max", hi)):
        ET.SubElement(
            bounds, tag, {"type": "Vector3D", **{a: format_float(v) for a, v in zip("xyz", corner, strict=True)}}
        )
    for pid, xyz in entries:
        point = ET.SubElement(series, "point")
        ET.SubElement(point, "id").text = str(pid)
        ET.SubElement(point, "specification").text = "0"
        for axis, value in zip("xyz", xyz, strict=True):
            ET.SubElement(point, axis).text = format_float(value)

    ET.indent(root, space="  ")
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(out, encoding="UTF-8", xml_declaration=True)
    logger.debug("wrote %d points to MITK point set %s", len(entries), out.name)
    return out


def read_mps(path: Path | str) -> list[RawPoint]:
    """Read a MITK point set.

    Parameters
    ----------
    path:
        A ``*.mps`` file.

    Returns
    -------
    list[RawPoint]
        ``(str(point id), (x, y, z))`` in file order, LPS mm (world coordinates after the file's geometry).
        Repeated ids are kept, so :func:`~cardiofm.labels.formats.apply_label_map` can report them.

    Raises
    ------
    LabelError
        If the file holds a DTD, is not well-formed XML, is not a point set, holds several point sets or several
        time steps with points, or a point lacks an id or a numeric coordinate.
    """
    try:
        # Decode first so the DTD check sees the real text whatever encoding a file declares; MITK writes UTF-8.
        text = read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise file_error(path, "is not UTF-8 text", _RESAVE) from None
    if _DTD_PATTERN.search(text):
        raise file_error(path, "contains a DOCTYPE/ENTITY declaration, which is refused for safety", _RESAVE)
    try:
        root = ET.fromstring(text)  # DTDs (entity expansion) are refused above
    except ET.ParseError as exc:
        raise file_error(path, f"is not well-formed XML ({exc})", _RESAVE) from None
    if root.tag != "point_set_file":
        raise file_error(path, f"is not a MITK point set (root element <{root.tag}>)", _RESAVE)
    point_sets = root.findall("point_set")
    if len(point_sets) > 1:
        raise file_error(path, f"holds {len(point_sets)} point sets", "save each point set to its own file")
    if not point_sets:
        return []
    point_set = point_sets[0]
    series = point_set.findall("time_series") or [point_set]  # files without time series hold points directly
    with_points = [s for s in series if s.find("point") is not None]
    if len(with_points) > 1:
        raise file_error(
            path, f"holds points in {len(with_points)} time steps", "save the annotation of a single time step"
        )
    if not with_points:
        return []
    block = with_points[0]
    matrix, offset = _geometry(path, block.find("Geometry3D"))
    result: list[RawPoint] = []
    for number, point in enumerate(block.findall("point"), start=1):
        pid = _text(path, point, "id", number)
        try:
            id_value = int(pid)
        except ValueError:
            raise file_error(path, f"point #{number} has a non-integer id {pid!r}", _RESAVE) from None
        local = np.array([_number(path, _text(path, point, a, number), f"point #{number} {a}") for a in "xyz"])
        result.append((str(id_value), to_point3(matrix @ local + offset)))
    logger.debug("read %d points from a MITK point set", len(result))
    return result


def _id_for(label: str, id_of: Mapping[str, int] | None) -> int:
    """Point id of ``label`` from ``id_of``, or the label read as an integer."""
    if id_of is not None:
        if label not in id_of:
            raise ValueError(f"label {label!r} has no MITK point id in id_of")
        pid = int(id_of[label])
    else:
        try:
            pid = int(label)
        except ValueError:
            raise ValueError(f"label {label!r} is not an integer; pass id_of to give it a MITK point id") from None
    if pid < 0:
        raise ValueError(f"MITK point ids must be non-negative, got {pid} for {label!r}")
    return pid


def _text(path: Path | str, point: ET.Element, tag: str, number: int) -> str:
    """Text of child ``tag`` of a ``<point>``, or a :class:`LabelError` if it is absent or empty."""
    child = point.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise file_error(path, f"point #{number} has no <{tag}>", _RESAVE)
    return child.text.strip()


def _number(path: Path | str, text: str, what: str) -> float:
    """Parse a coordinate or matrix entry, or raise a :class:`LabelError` naming the file."""
    try:
        return float(text)
    except ValueError:
        raise file_error(path, f"has a non-numeric value {text!r} ({what})", _RESAVE) from None


def _geometry(path: Path | str, element: ET.Element | None) -> tuple[FloatArray, FloatArray]:
    """Index-to-world matrix (3x3) and offset (3,) of a ``<Geometry3D>``; identity if the element is absent."""
    if element is None:
        return np.eye(3), np.zeros(3)
    matrix_el = element.find("IndexToWorld")
    offset_el = element.find("Offset")
    if matrix_el is None or offset_el is None:
        raise file_error(path, "has a <Geometry3D> without <IndexToWorld> or <Offset>", _RESAVE)
    try:
        matrix = np.array(
            [[_number(path, matrix_el.attrib[f"m_{r}_{c}"], "IndexToWorld") for c in range(3)] for r in range(3)]
        )
        offset = np.array([_number(path, offset_el.attrib[a], "Offset") for a in "xyz"])
    except KeyError as exc:
        raise file_error(path, f"has an incomplete <Geometry3D> (missing {exc.args[0]})", _RESAVE) from None
    if not np.allclose(matrix, np.eye(3)) or np.any(offset != 0):
        logger.info("a MITK point set has a non-identity geometry; applying it")
    return matrix, offset
