"""Kaapana's real Airflow plugin, out of cluster: environment, installed dags folder, metadata database.

Everything here happens when pytest loads this file, before anything imports Airflow: Airflow reads its
configuration (home, dags and plugins folders, executor) on first import, and Kaapana's plugin reads the
platform's variables (registry, version, namespaces, service URLs, ``GPU_SUPPORT``) when it is imported.
The dags folder is the DAG-installer image's ``/kaapana/tmp/dags``: the files are staged as
``make kaapana-files`` stages them and the Dockerfile's ``COPY`` lines are replayed, so the DAGs see the
image's cardiofm subset, not the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from stage_files import install

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "extensions" / "cardiofm-workflow"
#: Where Kaapana's Airflow plugin (the ``kaapana`` package) lies in a Kaapana source tree.
PLUGIN_DIR = Path("data-processing/kaapana-plugin/extension/docker/files/plugin")
BASE_OPERATOR = PLUGIN_DIR / "kaapana" / "operators" / "KaapanaBaseOperator.py"

#: What a Kaapana platform gives Airflow (example values; the plugin reads them when it is imported).
PLATFORM_ENV = {
    "SERVICES_NAMESPACE": "services",
    "ADMIN_NAMESPACE": "admin",
    "EXTENSIONS_NAMESPACE": "extensions",
    "KEYCLOAK_URL": "http://keycloak-external-service.admin.svc:80",
    "KUBE_HELM_URL": "http://kube-helm-service.admin.svc:5000",
    "OPENSEARCH_URL": "http://opensearch-service.services.svc:9200",
    "DICOM_WEB_FILTER_URL": "http://dicom-web-filter-service.services.svc:8080",
    "NOTIFICATION_URL": "http://notification-service.services.svc:80",
    "AII_URL": "http://aii-service.services.svc:8080",
    "KAAPANA_BACKEND_URL": "http://kaapana-backend-service.services.svc:5000",
    "MINIO_URL": "http://minio-service.services.svc:9000",
    "DEFAULT_REGISTRY": "registry.example.org/kaapana",
    "KAAPANA_BUILD_VERSION": "0.6.0",
    "PLATFORM_VERSION": "0.6.0",
    "INSTANCE_NAME": "site-a",
    "PULL_POLICY_IMAGES": "IfNotPresent",
    "GPU_SUPPORT": "True",
    "PROXY": "http://proxy.example.org:3128",
    # read when the plugin's other operators are imported (Airflow's plugin manager imports the whole folder)
    "SYSTEM_USER_PASSWORD": "not-a-password",
    "OIDC_CLIENT_SECRET": "not-a-secret",
}

#: A kubeconfig naming a cluster that is not there: Kaapana's task runner loads one when it is imported.
FAKE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: no-cluster
  cluster: {server: "https://127.0.0.1:9", insecure-skip-tls-verify: true}
users:
- name: no-cluster
  user: {token: not-a-token}
contexts:
- name: no-cluster
  context: {cluster: no-cluster, user: no-cluster, namespace: default}
current-context: no-cluster
"""


def _plugin_folder() -> Path:
    raw = os.environ.get("KAAPANA_SRC", "").strip()
    hint = (
        "set KAAPANA_SRC to a checkout of Kaapana 0.6.0 (the folder holding data-processing/, lib/ and "
        "services/); see tests/kaapana/README.md"
    )
    if not raw:
        raise pytest.UsageError(f"KAAPANA_SRC is not set: {hint}")
    src = Path(raw).expanduser().resolve()
    if not (src / BASE_OPERATOR).is_file():
        raise pytest.UsageError(f"KAAPANA_SRC={raw}: no {BASE_OPERATOR} there: {hint}")
    return src / PLUGIN_DIR


def _install_dags(root: Path) -> Path:
    """``/kaapana/tmp/dags`` of the DAG-installer image, rebuilt under ``root`` from its COPY lines."""
    installed = Path(install(root))
    assert {p.name for p in installed.iterdir()} == {"dags"}, "the image installs into /kaapana/tmp/dags only"
    return installed / "dags"


PLUGINS = _plugin_folder()
SCRATCH = Path(tempfile.mkdtemp(prefix="cardiofm-kaapana-tests-"))
DAGS = _install_dags(SCRATCH)
#: Stands in for Airflow's view of the workflow-data volume (``/kaapana/mounted/workflows/data`` in Kaapana).
AIRFLOW_WORKFLOW_DIR = SCRATCH / "workflows" / "data"
AIRFLOW_WORKFLOW_DIR.mkdir(parents=True)
(SCRATCH / "kubeconfig").write_text(FAKE_KUBECONFIG)

os.environ.update(PLATFORM_ENV)
os.environ.update(
    {
        "KUBECONFIG": str(SCRATCH / "kubeconfig"),
        "AIRFLOW_HOME": str(SCRATCH / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor,KubernetesExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "CARDIOFM_BACKEND": "kaapana",
    }
)
# Airflow puts the dags and plugins folders on sys.path; first here, so that `cardiofm` is the image's copy
# (`python -m pytest` puts the working directory, the source tree, on the path too)
sys.path[:0] = [str(DAGS), str(PLUGINS)]


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> Path:
    """A migrated SQLite metadata database (the plugin reads Airflow Variables and pools; dag.test() runs)."""
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return home


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SCRATCH, ignore_errors=True)
