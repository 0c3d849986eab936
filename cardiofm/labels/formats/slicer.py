"""3D Slicer markups point lists (``.mrk.json``).

Slicer ≥ 4.11 states each markup's ``coordinateSystem`` (``"LPS"``, Slicer's default in files, or ``"RAS"``);
the reader honours it and returns LPS mm. Control points whose ``positionStatus`` is not ``"defined"`` (never
placed, skipped or only previewed) are returned without a position instead of as ``(0, 0, 0)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from cardiofm.labels.formats._common import (
    PointsLike,
    RawPoint,
    as_pairs,
    file_error,
    point_from_lps,
    point_to_lps,
    read_bytes,
)

logger = logging.getLogger(__name__)

#: Schema id written by Slicer 5 for markups files.
MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
_RESAVE = "re-save the markups from 3D Slicer (≥ 4.11) as .mrk.json or fix the file"


def write_mrk_json(
    path: Path | str,
    points: PointsLike,
    coordinate_system: Literal["LPS", "RAS"] = "LPS",
) -> Path:
    """Write a Slicer point list (one ``Fiducial`` markup).

    Parameters
    ----------
    path:
        Output file (conventionally ``*.mrk.json``); parent folders are created.
    points:
        ``{site label: (x, y, z)}`` or ``(label, xyz)`` pairs, **LPS** mm. A ``None`` position is written as a
        control point with ``positionStatus: "undefined"`` (what Slicer writes for an unplaced point).
    coordinate_system:
        System the file states and stores positions in: ``"LPS"`` (Slicer's default) or ``"RAS"``.

    Returns
    -------
    Path
        The file written.
    """
    if coordinate_system not in ("LPS", "RAS"):
        raise ValueError(f"coordinate_system must be 'LPS' or 'RAS', got {coordinate_system!r}")
    out = Path(path)
    control_points: list[dict[str, Any]] = []
    for number, (label, xyz) in enumerate(as_pairs(points), start=1):
        position = [0.0, 0.0, 0.0] if xyz is None else list(point_from_lps(xyz, coordinate_system))
        control_points.append(
            {
                "id": str(number),
                "label": label,
                "description": "",
                "associatedNodeID": "",
                "position": position,
                "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                "selected": True,
                "locked": False,
                "visibility": True,
                "positionStatus": "undefined" if xyz is None else "defined",
            }
        )
    document = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": coordinate_system,
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "%N-%d",
                "lastUsedControlPointNumber": len(control_points),
                "controlPoints": control_points,
                "measurements": [],
            }
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=4) + "\n", encoding="utf-8")
    logger.debug("wrote %d control points (%s) to %s", len(control_points), coordinate_system, out.name)
    return out


def read_mrk_json(path: Path | str) -> list[RawPoint]:
    """Read the control points of every ``Fiducial`` markup (point list) in a Slicer markups file.

    Parameters
    ----------
    path:
        A ``*.mrk.json`` file.

    Returns
    -------
    list[RawPoint]
        ``(label, (x, y, z) | None)`` in file order, **LPS** mm whatever the file's coordinate system. The key is
        the control point's ``label`` (its ``id`` where the label is empty). Points whose ``positionStatus`` is
        ``"undefined"``, ``"missing"`` or ``"preview"`` have ``None`` positions. Other markup types (lines,
        curves, planes…) are skipped with a warning.

    Raises
    ------
    LabelError
        If the file is not JSON or not a markups file, a markup does not state its ``coordinateSystem`` or uses
        units other than mm, or a defined position is not three numbers.
    """
    try:
        document = json.loads(read_bytes(path).decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise file_error(path, "is not UTF-8 text", _RESAVE) from None
    except json.JSONDecodeError as exc:
        raise file_error(path, f"is not valid JSON (line {exc.lineno}: {exc.msg})", _RESAVE) from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list):
        raise file_error(path, "is not a Slicer markups file (no 'markups' list)", _RESAVE)
    result: list[RawPoint] = []
    for index, markup in enumerate(markups, start=1):
        if not isinstance(markup, dict):
            raise file_error(path, f"has a malformed markup #{index}", _RESAVE)
        kind = markup.get("type")
        if kind != "Fiducial":
            logger.warning("skipping markup #%d of type %r; only point lists (Fiducial) hold landmarks", index, kind)
            continue
        result.extend(_read_markup(path, markup, index))
    logger.debug("read %d control points from a Slicer markups file", len(result))
    return result


def _read_markup(path: Path | str, markup: dict[str, Any], index: int) -> list[RawPoint]:
    """Control points of one Fiducial markup, in LPS mm."""
    system = markup.get("coordinateSystem")
    if system is None:
        raise file_error(
            path,
            f"does not state the coordinateSystem of markup #{index}",
            're-save it from 3D Slicer ≥ 4.11 (which writes it), or add "coordinateSystem": "LPS" or "RAS" '
            "to the markup after checking which one the tool used",
        )
    if not isinstance(system, str) or system.upper() not in ("LPS", "RAS"):
        raise file_error(path, f"has an unknown coordinateSystem {system!r} in markup #{index}", "use 'LPS' or 'RAS'")
    units = markup.get("coordinateUnits", "mm")
    if units != "mm":
        raise file_error(path, f"uses coordinateUnits {units!r} in markup #{index}", "re-save it with units mm")
    control_points = markup.get("controlPoints", [])
    if not isinstance(control_points, list):
        raise file_error(path, f"has a malformed controlPoints list in markup #{index}", _RESAVE)
    result: list[RawPoint] = []
    for number, cp in enumerate(control_points, start=1):
        if not isinstance(cp, dict):
            raise file_error(path, f"has a malformed control point #{number} in markup #{index}", _RESAVE)
        label = cp.get("label") or cp.get("id") or ""
        if not isinstance(label, str):
            label = str(label)
        status = cp.get("positionStatus", "defined")
        if status != "defined" or "position" not in cp:
            result.append((label, None))
            continue
        position = cp["position"]
        if (
            not isinstance(position, list)
            or len(position) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in position)
        ):
            raise file_error(
                path, f"has a position that is not three numbers (control point #{number}, markup #{index})", _RESAVE
            )
        xyz = (float(position[0]), float(position[1]), float(position[2]))
        result.append((label, point_to_lps(xyz, system.upper())))
    return result
