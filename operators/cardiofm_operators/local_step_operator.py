"""The ``local`` backend: a step as a subprocess in its own virtual environment (the embedded default).

The subprocess runs ``python -m cardiofm step`` with ``CARDIOFM_STEP`` set, exactly what the image's
entrypoint runs, in the interpreter named by ``CARDIOFM_PYTHON_<PROFILE>`` (``PROCESSING``, ``SEGMENTER``,
``TRAINER``) or else ``CARDIOFM_PYTHON``. The workflow folder of a run is
``$CARDIOFM_WORKFLOWS_DIR/<run id>`` (default ``$AIRFLOW_HOME/cardiofm-workflows``), laid out as Kaapana's.
The subprocess inherits the Airflow worker's environment (so a PACS password variable, and
``CARDIOFM_DATA_ROOT`` where relative paths of forms resolve, reach it), with the step's own variables on top.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.exceptions import AirflowException, AirflowSkipException
from airflow.models import BaseOperator

from cardiofm.errors import CardioFMError, describe_exit_code
from cardiofm_operators.step_operator_env import (
    EXIT_SKIP,
    check_env,
    run_env,
    step_params,
)

WORKFLOWS_VAR = "CARDIOFM_WORKFLOWS_DIR"


def workflows_dir(env: Mapping[str, str]) -> Path:
    """Where the local backend keeps its runs' workflow folders."""
    if env.get(WORKFLOWS_VAR):
        return Path(env[WORKFLOWS_VAR])
    return Path(env.get("AIRFLOW_HOME", str(Path.home() / "airflow"))) / "cardiofm-workflows"


def interpreter(step: str, env: Mapping[str, str]) -> str:
    """The Python of the step's environment (AirflowException saying which variable to set)."""
    profile = step_params(step).image
    for var in (f"CARDIOFM_PYTHON_{profile.upper()}", "CARDIOFM_PYTHON"):
        if env.get(var):
            if not os.access(env[var], os.X_OK):
                raise AirflowException(f"{var}={env[var]} is not an executable Python interpreter")
            return env[var]
    raise AirflowException(
        f"the local backend needs the Python of cardiofm's {profile} environment: set CARDIOFM_PYTHON_"
        f"{profile.upper()} or CARDIOFM_PYTHON in Airflow's environment (e.g. .venv/bin/python after `make setup`)"
    )


class LocalStepOperator(BaseOperator):
    """Run ``cardiofm step <step>`` as a subprocess, with Kaapana's environment contract."""

    template_fields = ()
    ui_color = "#d9ecf2"

    def __init__(
        self,
        *,
        step: str,
        env_vars: Mapping[str, str],
        operator_in_dir: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.env_vars = dict(env_vars)
        self.operator_in_dir = operator_in_dir
        self.operator_out_dir = self.task_id

    def step_env(self, context: Mapping[str, Any], base: Mapping[str, str]) -> dict[str, str]:
        """The subprocess's environment for this run (see :mod:`.step_operator_env` for the layers)."""
        return run_env({**base, **self.env_vars}, str(workflows_dir(base)), self, context)

    def execute(self, context: Any) -> None:
        """Run the step; exit 126 skips the task, any other non-zero exit fails it, saying what the code means."""
        env = self.step_env(context, os.environ)
        try:
            check_env(self.step, env)
        except CardioFMError as exc:
            raise AirflowException(f"cardiofm step {self.step}: {exc}") from exc
        Path(env["WORKFLOW_DIR"]).mkdir(parents=True, exist_ok=True)
        command = [interpreter(self.step, env), "-m", "cardiofm", "step"]
        self.log.info("running cardiofm step %s in %s", self.step, env["WORKFLOW_DIR"])
        with subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc:
            for line in proc.stdout or ():
                self.log.info("%s", line.rstrip())
            code = proc.wait()
        if code == EXIT_SKIP:
            raise AirflowSkipException(f"cardiofm step {self.step}: nothing to do")
        if code != 0:
            raise AirflowException(f"cardiofm step {self.step} failed with exit code {describe_exit_code(code)}")
