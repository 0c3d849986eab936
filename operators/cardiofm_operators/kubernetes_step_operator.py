"""The ``kubernetes`` backend: a step as a pod of plain Airflow's ``KubernetesPodOperator`` (no Kaapana).

Settings from Airflow's environment: ``CARDIOFM_IMAGE_REGISTRY`` and ``CARDIOFM_IMAGE_TAG`` (images
``<registry>/cardiofm-<profile>:<tag>``), ``CARDIOFM_NAMESPACE`` (default ``default``) and ``CARDIOFM_DATA_PVC``,
the PersistentVolumeClaim mounted at ``/data`` in every step: ``/data`` is the data root (relative paths in
forms), and a run's workflow folder is ``/data/workflows/<run id>``, laid out as Kaapana's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from airflow.exceptions import AirflowException
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from cardiofm_operators.step_operator_env import (
    DATA_ROOT_VAR,
    EXIT_SKIP,
    RESOURCES,
    Resources,
    run_env,
    step_params,
)

DATA_MOUNT = "/data"


def _setting(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise AirflowException(f"the kubernetes backend needs {name} in Airflow's environment (see its module doc)")
    return value


class CardiofmPodOperator(KubernetesPodOperator):
    """``cardiofm step <step>`` in its image as a Kubernetes pod."""

    def __init__(
        self,
        *,
        step: str,
        env_vars: Mapping[str, str],
        operator_in_dir: str,
        task_id: str,
        resources: Resources | None = None,
        **kwargs: Any,
    ) -> None:
        params = step_params(step)
        res = resources or RESOURCES[params.image]
        limits = {"memory": f"{res.ram_mem_mb + 100}Mi"}
        if res.gpu_mem_mb is not None:
            limits["nvidia.com/gpu"] = "1"
        claim = _setting("CARDIOFM_DATA_PVC")
        registry, tag = _setting("CARDIOFM_IMAGE_REGISTRY"), _setting("CARDIOFM_IMAGE_TAG")
        fixed = {DATA_ROOT_VAR: DATA_MOUNT, **env_vars}
        super().__init__(
            task_id=task_id,
            name=task_id,
            namespace=os.environ.get("CARDIOFM_NAMESPACE", "default"),
            image=f"{registry}/cardiofm-{params.image}:{tag}",
            env_vars=fixed,
            container_resources=k8s.V1ResourceRequirements(requests={"memory": f"{res.ram_mem_mb}Mi"}, limits=limits),
            volumes=[k8s.V1Volume(name="data", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim))],
            volume_mounts=[k8s.V1VolumeMount(name="data", mount_path=DATA_MOUNT)],
            execution_timeout=kwargs.pop("execution_timeout", res.execution_timeout),
            skip_on_exit_code=EXIT_SKIP,
            get_logs=True,
            on_finish_action="delete_succeeded_pod",
            **kwargs,
        )
        self.step = step
        self.fixed_env = fixed
        self.operator_in_dir = operator_in_dir
        self.operator_out_dir = task_id

    def run_env(self, context: Mapping[str, Any]) -> dict[str, str]:
        """The pod's environment for this run: fixed settings, Kaapana's contract, the run's form."""
        return run_env(self.fixed_env, f"{DATA_MOUNT}/workflows", self, context)

    def execute(self, context: Any) -> Any:
        """Start the pod with this run's environment."""
        self.env_vars = [k8s.V1EnvVar(name=k, value=v) for k, v in self.run_env(context).items()]
        return super().execute(context)
