"""The ``kaapana`` backend: a step as a processing-container pod started by Kaapana's ``KaapanaBaseOperator``.

Imported only where Kaapana's Airflow plugin is (``CARDIOFM_BACKEND=kaapana``, or unset inside Kaapana).
Kaapana 0.6 does not pass ``cmds``/``arguments`` to the pod, so the step is chosen by ``CARDIOFM_STEP`` and
the image's entrypoint (``cardiofm step``). Kaapana itself adds ``WORKFLOW_DIR``, ``BATCH_NAME``,
``OPERATOR_OUT_DIR``, ``RUN_ID``, ``DAG_ID``, ``TASK_ID`` and every form key; ``OPERATOR_IN_DIR`` comes from
``input_operator`` (or, for a chain's first task, ``operator_in_dir``). Images follow Kaapana's naming, which
its build script and DAG installer scan for: ``image=f"{DEFAULT_REGISTRY}/<image>:{KAAPANA_BUILD_VERSION}"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kaapana.blueprints.kaapana_global_variables import DEFAULT_REGISTRY, KAAPANA_BUILD_VERSION
from kaapana.operators.KaapanaBaseOperator import KaapanaBaseOperator
from kubernetes.client import models as k8s

from cardiofm.contracts.env import ImageProfile
from cardiofm.contracts.kaapana import FIRST_INPUT_DIR
from cardiofm_operators.step_operator_env import (
    INSTALL_TIME_SETTINGS,
    RESOURCES,
    Resources,
    step_params,
)

#: The site's persistent data on Kaapana's workflow-data volume (relative paths in forms are relative to it).
KAAPANA_DATA_ROOT = "/kaapana/mounted/data"
#: The Kubernetes Secret with the site bundle (``ca.pem``, ``site.key``); created by the site's admin.
SITE_BUNDLE_SECRET = "cardiofm-site-bundle"
#: The extension's install-time settings (its chart renders it from Kaapana's extension dialog).
SITE_SETTINGS_SECRET = "cardiofm-site-settings"
#: The Kubernetes Secret with the PACS's DICOMweb password (key ``password``); optional.
PACS_SECRET = "cardiofm-pacs"

# written as image=f"..." on purpose: Kaapana's build script and DAG installer find the images by that text
_IMAGES: dict[ImageProfile, dict[str, str]] = {
    "processing": dict(image=f"{DEFAULT_REGISTRY}/cardiofm-processing:{KAAPANA_BUILD_VERSION}"),  # noqa: C408
    "segmenter": dict(image=f"{DEFAULT_REGISTRY}/cardiofm-segmenter:{KAAPANA_BUILD_VERSION}"),  # noqa: C408
    "trainer": dict(image=f"{DEFAULT_REGISTRY}/cardiofm-trainer:{KAAPANA_BUILD_VERSION}"),  # noqa: C408
}


def env_secret(var: str, secret: str, key: str, *, optional: bool = False) -> k8s.V1EnvVar:
    """An environment variable of the pod read from a Kubernetes Secret (Kaapana 0.6 adds ``secrets`` to the env)."""
    selector = k8s.V1SecretKeySelector(name=secret, key=key, optional=optional)
    return k8s.V1EnvVar(name=var, value_from=k8s.V1EnvVarSource(secret_key_ref=selector))


class CardiofmKaapanaOperator(KaapanaBaseOperator):
    """``cardiofm step <step>`` in its image, with Kaapana's constructor contract."""

    def __init__(
        self,
        *,
        dag: Any,
        step: str,
        env_vars: Mapping[str, str],
        input_operator: KaapanaBaseOperator | None = None,
        task_id: str | None = None,
        resources: Resources | None = None,
        **kwargs: Any,
    ) -> None:
        params = step_params(step)
        res = resources or RESOURCES[params.image]
        dirs: dict[str, Any] = (
            {"input_operator": input_operator} if input_operator is not None else {"operator_in_dir": FIRST_INPUT_DIR}
        )
        network: dict[str, Any] = {}
        if step == "stage-studies":
            # the site's PACS may be outside the cluster; its DICOMweb password comes from a Secret (optional)
            network = {
                "labels": {"network-access-external-ips": "true"},
                "secrets": [env_secret("CARDIOFM_PACS_PASSWORD", PACS_SECRET, "password", optional=True)],
            }
        if step == "site-join":
            # the SuperNode connects out to the coordinator through the cluster's proxy; its TLS material comes
            # from the site bundle as env secrets (KaapanaBaseOperator mounts no volumes of a DAG's choosing)
            network = {
                "labels": {"network-access-external-ips": "true"},
                "enable_proxy": True,
                "secrets": [
                    env_secret("CARDIOFM_CA_CERT_PEM", SITE_BUNDLE_SECRET, "ca.pem"),
                    env_secret("CARDIOFM_SITE_KEY_PEM", SITE_BUNDLE_SECRET, "site.key"),
                    *(
                        env_secret(f"CARDIOFM_DEFAULT_{field.upper()}", SITE_SETTINGS_SECRET, field, optional=True)
                        for field in INSTALL_TIME_SETTINGS[step]
                    ),
                ],
            }
        super().__init__(
            dag=dag,
            name=task_id or step,
            **_IMAGES[params.image],
            image_pull_secrets=["registry-secret"],
            operator_out_dir=task_id or step,
            env_vars={"CARDIOFM_DATA_ROOT": KAAPANA_DATA_ROOT, **env_vars},
            ram_mem_mb=res.ram_mem_mb,
            gpu_mem_mb=res.gpu_mem_mb,
            execution_timeout=kwargs.pop("execution_timeout", res.execution_timeout),
            **dirs,
            **network,
            **kwargs,
        )
