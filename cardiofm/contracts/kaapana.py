"""Kaapana's container environment contract, read once into a typed model.

``KaapanaBaseOperator`` starts every processing container with ``WORKFLOW_DIR``, ``BATCH_NAME``,
``OPERATOR_IN_DIR``, ``OPERATOR_OUT_DIR``, ``RUN_ID``, ``DAG_ID`` and ``TASK_ID``; per-case inputs
live in ``$WORKFLOW_DIR/$BATCH_NAME/<case>/$OPERATOR_IN_DIR`` and outputs go to
``$WORKFLOW_DIR/$BATCH_NAME/<case>/$OPERATOR_OUT_DIR``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cardiofm.errors import ConfigError

_DIR_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
#: ``OPERATOR_IN_DIR`` of a chain's first task, which reads the PACS rather than an upstream task's folder.
FIRST_INPUT_DIR = "pacs"


class KaapanaContext(BaseModel):
    """Where a step reads and writes, and which run it belongs to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow_dir: Path
    batch_name: str = Field(default="batch", pattern=_DIR_NAME)
    operator_in_dir: str = Field(pattern=_DIR_NAME)
    operator_out_dir: str = Field(pattern=_DIR_NAME)
    run_id: str = "local"
    dag_id: str = "cardiofm"
    task_id: str = "step"

    @property
    def batch_dir(self) -> Path:
        """``$WORKFLOW_DIR/$BATCH_NAME``: one sub-folder per case."""
        return self.workflow_dir / self.batch_name

    @property
    def step_dir(self) -> Path:
        """Batch-level output folder of this step (summary, quarantine list)."""
        return self.workflow_dir / self.operator_out_dir

    def to_env(self) -> dict[str, str]:
        """The environment variables that describe this context."""
        return {
            "WORKFLOW_DIR": str(self.workflow_dir),
            "BATCH_NAME": self.batch_name,
            "OPERATOR_IN_DIR": self.operator_in_dir,
            "OPERATOR_OUT_DIR": self.operator_out_dir,
            "RUN_ID": self.run_id,
            "DAG_ID": self.dag_id,
            "TASK_ID": self.task_id,
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KaapanaContext:
        """Read the contract from ``env``; a missing or invalid variable raises ConfigError naming it."""
        names = {name: name.upper() for name in cls.model_fields}
        missing = [
            var
            for field, var in names.items()
            if cls.model_fields[field].is_required() and not env.get(var, "").strip()
        ]
        if missing:
            raise ConfigError(
                f"environment variable(s) {', '.join(missing)} not set or empty: a step container needs Kaapana's "
                "workflow contract (WORKFLOW_DIR, OPERATOR_IN_DIR, OPERATOR_OUT_DIR, ...)"
            )
        values = {field: env[var] for field, var in names.items() if var in env}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(f"invalid workflow environment: {_first_error(exc)}") from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]).upper() or "value"
    return f"{where}: {err['msg']}"
