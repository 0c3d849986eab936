"""``step_task``: the one way a DAG makes a cardiofm task, whatever the backend.

The backend comes from ``CARDIOFM_BACKEND`` in Airflow's environment (``kaapana``, ``local`` or
``kubernetes``; unset: ``kaapana`` inside Kaapana, else ``local``), never from the DAG file. A DAG names the
step, its upstream task and the settings it fixes; each setting is checked against the step's params model
(:mod:`cardiofm.contracts.steps`) when the DAG is parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.models import BaseOperator

from cardiofm.contracts.kaapana import FIRST_INPUT_DIR
from cardiofm_operators.step_operator_env import (
    RESOURCES,
    backend_from_env,
    check_task_id,
    fixed_env,
    step_params,
)


def step_task(
    dag: Any,
    step: str,
    *,
    input_operator: BaseOperator | None = None,
    settings: Mapping[str, Any] | None = None,
    task_id: str | None = None,
    **kwargs: Any,
) -> BaseOperator:
    """The task that runs ``cardiofm step <step>`` after ``input_operator`` (whose output folder it reads)."""
    name = check_task_id(task_id or step)
    backend = backend_from_env()
    env = fixed_env(step, settings or {})
    if backend == "kaapana":
        from cardiofm_operators.kaapana_step_operator import CardiofmKaapanaOperator

        return CardiofmKaapanaOperator(
            dag=dag, step=step, env_vars=env, input_operator=input_operator, task_id=name, **kwargs
        )
    in_dir = getattr(input_operator, "operator_out_dir", None) or FIRST_INPUT_DIR
    if backend == "kubernetes":
        from cardiofm_operators.kubernetes_step_operator import CardiofmPodOperator

        return CardiofmPodOperator(dag=dag, step=step, env_vars=env, operator_in_dir=in_dir, task_id=name, **kwargs)
    from cardiofm_operators.local_step_operator import LocalStepOperator

    res = RESOURCES[step_params(step).image]
    return LocalStepOperator(
        dag=dag,
        step=step,
        env_vars=env,
        operator_in_dir=in_dir,
        task_id=name,
        execution_timeout=kwargs.pop("execution_timeout", res.execution_timeout),
        **kwargs,
    )
