"""Read the landmarks a measurement starts from: landmarks.json (canonical or predicted), .mps, .mrk.json."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from cardiofm.contracts.landmarks import Point3
from cardiofm.contracts.measurements import PredictedLandmarks
from cardiofm.errors import LabelError
from cardiofm.labels.formats import import_annotation, read_landmarks_json
from cardiofm.labels.labelmap import LabelMap

#: Keys only a prediction's ``landmarks.json`` has.
_PREDICTION_KEYS = frozenset({"missing", "confidence", "model"})


def read_landmarks_for_measurement(path: Path) -> dict[str, Point3]:
    """Canonical points (LPS mm) of a landmarks file.

    Parameters
    ----------
    path:
        ``*.json``: the canonical ``landmarks.json`` or the one ``cardiofm predict`` writes (with ``missing`` and
        ``confidence``; missing points are simply absent); ``*.mps`` (MITK) or ``*.mrk.json`` (3D Slicer) whose
        labels are the canonical names.

    Returns
    -------
    dict[str, Point3]
        ``{canonical name: (x, y, z)}`` in canonical order.

    Raises
    ------
    LabelError
        If the file is unreadable, not one of these formats, or does not match its schema.
    """
    name = path.name.lower()
    if name.endswith((".mps", ".mrk.json")):
        result = import_annotation(path, LabelMap.identity())
        result.raise_for_problems(path.name)
        return dict(result.points)
    if not name.endswith(".json"):
        raise LabelError(f"landmarks file '{path.name}' has an unknown format; use landmarks.json, .mps or .mrk.json")
    if _is_prediction(path):
        try:
            model = PredictedLandmarks.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
            raise LabelError(
                f"landmarks file '{path.name}' does not match the predicted landmarks.json schema ({details}); "
                "re-run the prediction or fix the file"
            ) from None
        return dict(model.points)
    return read_landmarks_json(path)


def _is_prediction(path: Path) -> bool:
    """True if ``path`` parses as a JSON object with a key only predictions have (errors are left to the reader)."""
    try:
        raw = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and bool(_PREDICTION_KEYS & set(raw))
