"""cardiofm's canonical ``landmarks.json`` (schema :class:`~cardiofm.contracts.landmarks.LandmarksFile`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cardiofm.contracts.landmarks import LandmarksFile, Point3
from cardiofm.labels.formats._common import file_error, read_bytes

logger = logging.getLogger(__name__)


def write_landmarks_json(path: Path | str, points_lps: Mapping[str, Point3]) -> Path:
    """Write canonical landmarks.

    Parameters
    ----------
    path:
        Output file (conventionally ``landmarks.json``); parent folders are created.
    points_lps:
        ``{canonical name: (x, y, z)}``, LPS mm; any subset of ``RCC LCC NCC RCO LCO MS1 MS2``.

    Returns
    -------
    Path
        The file written (points in canonical order).

    Raises
    ------
    ValueError
        If a name is not canonical or a coordinate is not finite (pydantic ``ValidationError``).
    """
    model = LandmarksFile(points={name: (float(x), float(y), float(z)) for name, (x, y, z) in points_lps.items()})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")
    logger.debug("wrote %d canonical landmarks to %s", len(model.points), out.name)
    return out


def read_landmarks_json(path: Path | str) -> dict[str, Point3]:
    """Read canonical landmarks.

    Unlike the site-format readers this returns a mapping: the file already uses canonical names, and
    duplicate keys are refused rather than returned.

    Parameters
    ----------
    path:
        A ``landmarks.json`` file.

    Returns
    -------
    dict[str, Point3]
        ``{canonical name: (x, y, z)}`` in canonical order, LPS mm.

    Raises
    ------
    LabelError
        If the file is not JSON, repeats a name, or does not match the schema (unknown name, non-finite or
        missing coordinate, coordinate system other than LPS, unit other than mm).
    """
    try:
        raw = json.loads(read_bytes(path).decode("utf-8-sig"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise file_error(path, "is not UTF-8 text", "re-export it") from None
    except json.JSONDecodeError as exc:
        raise file_error(path, f"is not valid JSON (line {exc.lineno}: {exc.msg})", "re-export it") from None
    except _DuplicateKeyError as exc:
        raise file_error(path, f"repeats the key {exc.args[0]!r}", "keep one entry per landmark") from None
    try:
        model = LandmarksFile.model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise file_error(path, f"does not match the landmarks.json schema ({details})", "fix or re-export it") from None
    return dict(model.points)


class _DuplicateKeyError(ValueError):
    """A JSON object repeats a key (``json`` would silently keep the last one)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses repeated keys."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result
