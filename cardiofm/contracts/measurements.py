"""Schemas of what a prediction hands a clinician: ``landmarks.json`` with confidence, ``measurements.json``.

Stdlib + pydantic only (the Airflow image reads them). Points are DICOM patient coordinates (LPS, mm).
A point the model could not place is listed in ``missing``, never given a made-up coordinate; a
measurement that cannot be computed is ``available: false`` with a ``reason``, never a number.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cardiofm.constants import LANDMARK_NAMES
from cardiofm.contracts.landmarks import Point3, canonical_points

#: Version tag of ``measurements.json``.
MEASUREMENTS_SCHEMA: str = "cardiofm.measurements/1"
#: Units a measurement may carry (UCUM codes, as the SR exports them).
Unit = Literal["mm", "mm2", "mm3", "deg", "1", "{score}", "{present}"]


class ModelInfo(BaseModel):
    """Which model produced a prediction (no site or patient information)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    sha256: str = Field(description="SHA-256 of the weights file the prediction used.")


class PredictedLandmarks(BaseModel):
    """``landmarks.json`` written by ``cardiofm predict``: the points it placed and the ones it could not."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    coordinate_system: Literal["LPS"] = "LPS"
    unit: Literal["mm"] = "mm"
    points: dict[str, Point3]
    #: Peak probability of each placed point's heatmap, 0..1.
    confidence: dict[str, float] = Field(default_factory=dict)
    #: Canonical names the model could not place (no confident detection).
    missing: list[str] = Field(default_factory=list)
    model: ModelInfo | None = None

    @field_validator("points")
    @classmethod
    def _canonical_finite(cls, points: dict[str, Point3]) -> dict[str, Point3]:
        return canonical_points(points)

    @model_validator(mode="after")
    def _disjoint(self) -> PredictedLandmarks:
        both = sorted(set(self.points) & set(self.missing))
        if both:
            raise ValueError(f"landmark(s) {both} are both placed and listed as missing")
        unknown = sorted(set(self.missing) - set(LANDMARK_NAMES))
        if unknown:
            raise ValueError(f"unknown missing landmark name(s) {unknown}")
        return self


class Measurement(BaseModel):
    """One measurement: a value with its unit, or ``available: false`` and why not."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Snake-case name with the unit in it, e.g. ``annulus_area_mm2``, ``rco_height_mm``.
    name: str
    #: ``annulus``, ``coronaries``, ``septum``, ``lvot``, ``sinus``, ``stj``, ``projection``, ``calcium``.
    group: str
    unit: Unit
    value: float | None = None
    available: bool = True
    reason: str | None = None
    #: Free-text method, e.g. the HU rule of a calcium volume.
    method: str | None = None

    @model_validator(mode="after")
    def _value_or_reason(self) -> Measurement:
        if self.available and (self.value is None or not math.isfinite(self.value)):
            raise ValueError(f"measurement {self.name} is marked available but has no finite value")
        if not self.available and (self.value is not None or not self.reason):
            raise ValueError(f"measurement {self.name} is not available: it needs a reason and no value")
        return self


class AnnularPlane(BaseModel):
    """The annular plane through the three hinge points: centre of the basal ring, unit normal (LV → aorta)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    centre_mm: Point3
    normal: Point3


class MeasurementReport(BaseModel):
    """``measurements.json``: every TAVI measurement of one CT, in a fixed order, with units.

    Write it with ``model_dump_json(by_alias=True)`` (the version tag is stored as ``schema``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_version: Literal["cardiofm.measurements/1"] = Field(default="cardiofm.measurements/1", alias="schema")
    coordinate_system: Literal["LPS"] = "LPS"
    annular_plane: AnnularPlane | None = None
    measurements: list[Measurement]

    def get(self, name: str) -> Measurement:
        """The measurement called ``name`` (``KeyError`` if the report has none)."""
        for m in self.measurements:
            if m.name == name:
                return m
        raise KeyError(name)
