"""Run a cardiofm DAG with Airflow itself, on the ``local`` backend, from cardiofm's own environment.

Airflow (Kaapana's 2.11 on Python 3.12) and cardiofm's steps live in different environments, as in a clinic:
this module starts ``operators/run_dag.py`` in the Airflow environment's interpreter, which parses ``dags/``
and runs one DAG with ``dag.test()``; each task then runs its ``cardiofm step`` as a subprocess in this
environment. Used by ``cardiofm demo --airflow-python`` (``make demo``) and the integration tests. Nothing of
Airflow is imported here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cardiofm.errors import ExternalToolError, MissingResourceError

#: The source tree the DAGs and operators are read from (this package's parent folder).
SOURCE_TREE = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LocalAirflow:
    """Where Airflow runs: its interpreter and a scratch folder for its homes and workflow folders."""

    python: Path
    scratch: Path
    #: The interpreter of cardiofm's environment, in which the tasks run their steps.
    step_python: Path = field(default_factory=lambda: Path(sys.executable))

    def check(self) -> None:
        """The Airflow interpreter and the DAGs must be there (MissingResourceError saying what to do)."""
        if not os.access(self.python, os.X_OK):
            raise MissingResourceError(f"Airflow interpreter {self.python} not found: run `make airflow`")
        if not (SOURCE_TREE / "dags").is_dir() or not (SOURCE_TREE / "operators" / "run_dag.py").is_file():
            raise MissingResourceError(
                f"the DAGs are not beside this cardiofm ({SOURCE_TREE}): run from the source tree (pip install -e .)"
            )


@dataclass(frozen=True)
class DagRunResult:
    """A finished DAG run: the state of each task, and the run's log."""

    tasks: dict[str, str]
    log: str


def run_dag(
    airflow: LocalAirflow,
    dag_id: str,
    form: Mapping[str, object],
    *,
    name: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 3600,
) -> DagRunResult:
    """Run ``dag_id`` with ``form`` as the run's ``workflow_form``; ``name`` keeps parallel runs apart.

    Raises
    ------
    ExternalToolError
        If the run did not succeed, with every task's state and the log's tail.
    """
    airflow.check()
    scratch = airflow.scratch / name
    scratch.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(str(p) for p in (SOURCE_TREE, SOURCE_TREE / "operators", SOURCE_TREE / "dags"))
    run_env = {
        **os.environ,
        **(env or {}),
        "AIRFLOW_HOME": str(scratch / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": path,
        "CARDIOFM_BACKEND": "local",
        "CARDIOFM_PYTHON": str(airflow.step_python),
        "CARDIOFM_WORKFLOWS_DIR": str(scratch / "workflows"),
    }
    command = [str(airflow.python), str(SOURCE_TREE / "operators" / "run_dag.py"), dag_id]
    command.append(json.dumps({"workflow_form": dict(form)}))
    try:
        proc = subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ExternalToolError(f"DAG {dag_id} ({name}) did not finish within {timeout_s:.0f} s") from exc
    log = proc.stdout + proc.stderr
    reports = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(reports[-1]) if reports else {}
    tasks = {str(k): str(v) for k, v in result.get("tasks", {}).items()}
    if proc.returncode != 0:
        states = ", ".join(f"{t} {s}" for t, s in tasks.items()) or json.dumps(result)[-1500:] or "no report"
        raise ExternalToolError(f"DAG {dag_id} ({name}) did not succeed: {states}", log_tail=log[-4000:])
    return DagRunResult(tasks=tasks, log=log)
