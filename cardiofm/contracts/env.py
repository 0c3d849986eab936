"""The base of every step's parameters: a frozen model that round-trips through environment variables.

The operator writes a step's parameters into the container environment with :meth:`StepParams.to_env`
(field ``margin_mm`` → variable ``MARGIN_MM``), the container reads them back with
:meth:`StepParams.from_env`. Kaapana passes UI-form values as ``str(value)``, so lists and dicts may
arrive as Python literals (``"['a', 'b']"``) as well as JSON; both are accepted.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from cardiofm.errors import ConfigError

#: Which container image a step runs in (``docker/<profile>.Dockerfile``).
ImageProfile = Literal["processing", "segmenter", "trainer"]


class StepParams(BaseModel):
    """Base of every step's parameters: frozen, no unknown fields, round-trips through env vars."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: ClassVar[str] = ""
    #: The image the step runs in; its interpreter in the ``local`` backend.
    image: ClassVar[ImageProfile] = "processing"
    #: Whether the step works over Kaapana's batch (reads ``WORKFLOW_DIR``, ``OPERATOR_IN_DIR``, ...).
    batch: ClassVar[bool] = True

    def to_env(self) -> dict[str, str]:
        """Environment variables for the container: scalars as text, structures as JSON, None as ``""``."""
        return {name.upper(): _env_text(value) for name, value in self.model_dump(mode="json").items()}

    @classmethod
    def env_names(cls) -> frozenset[str]:
        """The variables this step reads (its field names, upper-cased)."""
        return frozenset(name.upper() for name in cls.model_fields)

    @classmethod
    def partial_env(cls, values: Mapping[str, Any]) -> dict[str, str]:
        """Variables for some of the fields (a DAG's fixed settings; the rest comes from the form at run time).

        Each value is checked against its field's type and bounds, so a DAG with a wrong setting fails when it is
        parsed (cross-field checks run in the container, where every field is known).

        Raises
        ------
        ConfigError
            An unknown field, or a value its field rejects.
        """
        unknown = sorted(set(values) - set(cls.model_fields))
        if unknown:
            raise ConfigError(
                f"step {cls.step} has no parameter(s) {', '.join(unknown)}; known: {sorted(cls.model_fields)}"
            )
        env: dict[str, str] = {}
        for name, value in values.items():
            field = cls.model_fields[name]
            adapter: TypeAdapter[Any] = TypeAdapter(Annotated[field.annotation, field])  # type: ignore[arg-type]
            try:
                checked = adapter.validate_python(value)
            except ValidationError as exc:
                raise ConfigError(f"step {cls.step}: parameter {name}: {exc.errors()[0]['msg']}") from exc
            env[name.upper()] = _env_text(adapter.dump_python(checked, mode="json"))
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
                value = _parse_env_value(env[var])
            except ConfigError as exc:
                raise ConfigError(f"step {cls.step}: environment variable {var}: {exc}") from exc
            field = cls.model_fields[name]
            if not env[var].strip() and not field.is_required() and not _accepts_none(field.annotation):
                continue  # an untouched form field (empty) of a list or number: the field's default
            values[name] = value
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            var = str(err["loc"][0]).upper() if err["loc"] else "?"
            raise ConfigError(f"step {cls.step}: environment variable {var}: {err['msg']}") from exc


def _accepts_none(annotation: Any) -> bool:
    return annotation is None or type(None) in get_args(annotation)


def _env_text(value: Any) -> str:
    """One variable's text: scalars as text, structures as JSON, None as ``""``."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


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
