"""Schema of ``landmarks.json``: named points in DICOM patient coordinates (LPS, mm)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from cardiofm.constants import LANDMARK_NAMES

Point3 = tuple[float, float, float]


class LandmarksFile(BaseModel):
    """Canonical landmark file: ``{"coordinate_system": "LPS", "unit": "mm", "points": {"RCC": [x, y, z], ...}}``.

    Only canonical names (``RCC LCC NCC RCO LCO MS1 MS2``) are allowed; a file may hold any subset.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    coordinate_system: Literal["LPS"] = "LPS"
    unit: Literal["mm"] = "mm"
    points: dict[str, Point3]

    @field_validator("points")
    @classmethod
    def _canonical_finite(cls, points: dict[str, Point3]) -> dict[str, Point3]:
        return canonical_points(points)


def canonical_points(points: dict[str, Point3]) -> dict[str, Point3]:
    """``points`` in canonical order; ValueError for a name that is not canonical or a non-finite coordinate."""
    unknown = sorted(set(points) - set(LANDMARK_NAMES))
    if unknown:
        raise ValueError(f"unknown landmark name(s) {unknown}; expected a subset of {list(LANDMARK_NAMES)}")
    for name, xyz in points.items():
        if not all(math.isfinite(v) for v in xyz):
            raise ValueError(f"landmark {name} has a non-finite coordinate {xyz}")
    return {name: points[name] for name in LANDMARK_NAMES if name in points}
