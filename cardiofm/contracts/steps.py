"""Typed parameters of every processing step, shared by the Airflow operator and the container.

The operator writes a step's parameters into the container environment with :meth:`StepParams.to_env`
(field ``margin_mm`` → variable ``MARGIN_MM``), the container reads them back with
:meth:`StepParams.from_env`. Kaapana passes UI-form values as ``str(value)``, so lists and dicts may
arrive as Python literals (``"['a', 'b']"``) as well as JSON; both are accepted.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cardiofm.contracts.selection import SeriesRules
from cardiofm.errors import ConfigError


class StepParams(BaseModel):
    """Base of every step's parameters: frozen, no unknown fields, round-trips through env vars."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: ClassVar[str] = ""

    def to_env(self) -> dict[str, str]:
        """Environment variables for the container: scalars as text, structures as JSON, None as ``""``."""
        env: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                env[name.upper()] = ""
            elif isinstance(value, (dict, list)):
                env[name.upper()] = json.dumps(value)
            else:
                env[name.upper()] = str(value)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        """Read the parameters from ``env``; unset variables keep their defaults.

        Raises
        ------
        ConfigError
            Naming the variable and what was wrong with it.
        """
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            var = name.upper()
            if var not in env:
                continue
            try:
                values[name] = _parse_env_value(env[var])
            except ConfigError as exc:
                raise ConfigError(f"step {cls.step}: environment variable {var}: {exc}") from exc
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            var = str(err["loc"][0]).upper() if err["loc"] else "?"
            raise ConfigError(f"step {cls.step}: environment variable {var}: {err['msg']}") from exc


def _parse_env_value(raw: str) -> Any:
    """Empty → None; JSON or Python literals for structures; anything else stays text."""
    text = raw.strip()
    if text in ("", "None", "null"):
        return None
    if text[:1] in "[{(":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError) as exc:
                raise ConfigError(f"cannot parse {text[:60]!r} as a list or mapping") from exc
    return raw


class SelectSeriesParams(StepParams):
    """``select-series``: choose the TAVI-planning series of each study."""

    step: ClassVar[str] = "select-series"
    #: The site's ``site.yaml`` (its preferred cardiac phase fills in ``rules``); optional.
    site_config: str | None = None
    rules: SeriesRules = SeriesRules()
    #: The site's secret for hashing annotation match keys; None: ``.cardiofm/match.key`` beside ``site_config``.
    match_key_file: str | None = None


class ConvertParams(StepParams):
    """``convert``: DICOM series → NIfTI with geometry validation."""

    step: ClassVar[str] = "convert"
    name: str = Field(default="image", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    timeout_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    #: gzip the full-resolution image. Off by default: it is a work-folder intermediate that crop-heart
    #: reads at once, and gzip is most of the conversion time (about 2.6 of 3 s at 512²×300).
    compress: bool = False


class CropHeartParams(StepParams):
    """``crop-heart``: segment the heart, crop with a margin and resample to isotropic spacing."""

    step: ClassVar[str] = "crop-heart"
    segmenter: Literal["fallback", "totalsegmentator"] = "fallback"
    margin_mm: float = Field(default=20.0, ge=0.0, le=100.0)
    spacing_mm: float = Field(default=1.0, gt=0.2, le=5.0)
    #: Interpreter of the segmenter environment (TotalSegmentator); None: this interpreter.
    segmenter_python: str | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    timeout_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)


class ImportLabelsParams(StepParams):
    """``import-labels``: site annotations → canonical landmarks and masks on the crop grid."""

    step: ClassVar[str] = "import-labels"
    #: The site's ``site.yaml``; annotation paths in it are relative to ``site_dir``.
    site_config: str
    #: Folder the annotation paths are relative to; None: the folder of ``site_config``.
    site_dir: str | None = None
    #: The site's secret for hashing annotation match keys (as select-series); None: beside ``site_config``.
    match_key_file: str | None = None


class BuildDatasetParams(StepParams):
    """``build-dataset``: collect prepared cases into a site dataset with a frozen split."""

    step: ClassVar[str] = "build-dataset"
    dataset_dir: str
    site_id: str = Field(default="site", pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    test_fraction: float = Field(default=0.2, ge=0.0, le=0.9)
    split_seed: int = 0


STEPS: dict[str, type[StepParams]] = {
    p.step: p for p in (SelectSeriesParams, ConvertParams, CropHeartParams, ImportLabelsParams, BuildDatasetParams)
}
