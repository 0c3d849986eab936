"""What every backend gives a step: its environment, its resources, and how its exit code reads.

No Airflow import here, so the contract can be tested without it. The environment of a task is, in
order of precedence (later wins, as in Kaapana's ``KaapanaBaseOperator``):

1. the DAG's fixed settings for the step, checked against the step's params model when the DAG is parsed;
2. ``CARDIOFM_STEP`` (the image's entrypoint ``cardiofm step`` runs that step) and ``CARDIOFM_DATA_ROOT``;
3. Kaapana's workflow contract (``WORKFLOW_DIR``, ``OPERATOR_IN_DIR``, ...), set by the backend;
4. every key of the run's ``workflow_form``, upper-cased, its value as ``str(value)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cardiofm.contracts.env import ImageProfile
from cardiofm.contracts.kaapana import KaapanaContext
from cardiofm.contracts.steps import STEPS, StepParams
from cardiofm.errors import ConfigError

BACKEND_VAR = "CARDIOFM_BACKEND"
BACKENDS = ("kaapana", "local", "kubernetes")
STEP_VAR = "CARDIOFM_STEP"
DATA_ROOT_VAR = "CARDIOFM_DATA_ROOT"
#: Exit code Kaapana (and this package) turns into a skipped task.
EXIT_SKIP = 126


@dataclass(frozen=True)
class Resources:
    """What a step's pod asks for."""

    ram_mem_mb: int
    gpu_mem_mb: int | None
    execution_timeout: timedelta


#: Per image profile; the segmenter (TotalSegmentator) needs Kaapana's own figures for it.
RESOURCES: dict[ImageProfile, Resources] = {
    "processing": Resources(ram_mem_mb=4000, gpu_mem_mb=None, execution_timeout=timedelta(hours=4)),
    "segmenter": Resources(ram_mem_mb=16000, gpu_mem_mb=11900, execution_timeout=timedelta(hours=4)),
    "trainer": Resources(ram_mem_mb=24000, gpu_mem_mb=20000, execution_timeout=timedelta(hours=48)),
}

#: Step fields the Kaapana extension's install-time settings may fill (a run's form still takes precedence);
#: they arrive as ``CARDIOFM_DEFAULT_<FIELD>`` and ``cardiofm step`` uses them for empty fields.
INSTALL_TIME_SETTINGS: dict[str, tuple[str, ...]] = {"site-join": ("superlink", "pinned_fab_sha256")}

_TASK_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def backend_from_env(env: Mapping[str, str] | None = None) -> str:
    """The backend named by ``CARDIOFM_BACKEND``; unset: ``kaapana`` where Kaapana's plugin imports, else ``local``."""
    env = os.environ if env is None else env
    name = env.get(BACKEND_VAR, "").strip().lower()
    if not name:
        return "kaapana" if kaapana_available() else "local"
    if name not in BACKENDS:
        raise ConfigError(f"{BACKEND_VAR}={name!r} is not a backend; choose one of {', '.join(BACKENDS)}")
    return name


def kaapana_available() -> bool:
    """Whether Kaapana's Airflow plugin (``KaapanaBaseOperator``) can be imported here."""
    import importlib.util

    try:
        return importlib.util.find_spec("kaapana.operators.KaapanaBaseOperator") is not None
    except ModuleNotFoundError:
        return False


def step_params(step: str) -> type[StepParams]:
    """The params model of ``step`` (ConfigError naming the known steps)."""
    if step not in STEPS:
        raise ConfigError(f"{step!r} is not a cardiofm step; known steps: {', '.join(sorted(STEPS))}")
    return STEPS[step]


def check_task_id(task_id: str) -> str:
    """Task ids become pod and folder names: lower-case letters, digits and '-' (Kubernetes DNS-1123 labels)."""
    if not _TASK_ID.match(task_id):
        raise ConfigError(f"task id {task_id!r} must be 1-63 lower-case letters, digits or '-' (a Kubernetes name)")
    return task_id


def fixed_env(step: str, settings: Mapping[str, Any]) -> dict[str, str]:
    """Layers 1 and 2 of the environment (module docstring; each backend adds its data root).

    Settings are checked against the step's params model (ConfigError naming the wrong one).
    """
    env = step_params(step).partial_env(settings)
    env[STEP_VAR] = step
    return env


def form_env(conf: Mapping[str, Any] | None) -> dict[str, str]:
    """Layer 4: the run's ``workflow_form``, every key upper-cased and every value ``str(value)`` (as Kaapana)."""
    form = (conf or {}).get("workflow_form") or {}
    if not isinstance(form, Mapping):
        raise ConfigError("the run's conf.workflow_form must be a mapping of form fields to values")
    return {str(key).upper(): str(value) for key, value in form.items() if value is not None}


def check_env(step: str, env: Mapping[str, str]) -> None:
    """Fail before starting anything when the step could not read its environment (the container's own check)."""
    if step_params(step).batch:
        KaapanaContext.from_env(env)
    step_params(step).from_env(env)


def run_env(fixed: Mapping[str, str], workflows_root: str, task: Any, context: Mapping[str, Any]) -> dict[str, str]:
    """Layers 1-4 for one run of ``task`` (its ``operator_in_dir``/``_out_dir``, ``dag_id``, ``task_id``).

    The run's workflow folder is ``<workflows_root>/<run id as a folder name>``, laid out as Kaapana's.
    """
    run_id = str(context["run_id"])
    ctx = KaapanaContext(
        workflow_dir=f"{workflows_root}/{safe_run_id(run_id)}",
        operator_in_dir=task.operator_in_dir,
        operator_out_dir=task.operator_out_dir,
        run_id=run_id,
        dag_id=task.dag_id,
        task_id=task.task_id,
    )
    dag_run = context.get("dag_run")
    return {**fixed, **ctx.to_env(), **form_env(getattr(dag_run, "conf", None))}


def safe_run_id(run_id: str) -> str:
    """A run id as a folder name (Airflow's contain ':' and '+')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
