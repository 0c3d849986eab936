"""The one preprocessing configuration: saved inside every model artefact and read back at inference.

The reference work used two different CT normalisations by accident (training vs release); here the
values live in one frozen object that travels with the weights, so they cannot drift apart.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PreprocessingConfig(BaseModel):
    """Heart crop geometry and CT intensity normalisation (the paper's values by default).

    Intensities are clipped to ``[hu_clip_low, hu_clip_high]`` HU, then standardised with
    ``(hu - mean_hu) / std_hu``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    crop_margin_mm: float = Field(default=20.0, ge=0.0)
    spacing_mm: float = Field(default=1.0, gt=0.0)
    hu_clip_low: float = -1024.0
    hu_clip_high: float = 696.0
    mean_hu: float = -438.61
    std_hu: float = Field(default=520.98, gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> PreprocessingConfig:
        if self.hu_clip_low >= self.hu_clip_high:
            raise ValueError(f"hu_clip_low {self.hu_clip_low} must be below hu_clip_high {self.hu_clip_high}")
        return self
