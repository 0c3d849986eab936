"""The Kaapana extension as Kaapana installs it: the DAG-installer image's COPY lines, replayed.

Kaapana's base-installer copies ``/kaapana/tmp/dags`` into Airflow's dags folder. Here the files are staged
as ``make kaapana-files`` stages them, the Dockerfile's ``COPY`` lines are replayed into a scratch
``/kaapana/tmp``, and Airflow parses that folder alone in a fresh interpreter (nothing of the source tree on
its path), so a module the installed DAGs need but the image does not ship is an import error here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from stage_files import install

EXTENSION = REPO / "extensions" / "cardiofm-workflow"
#: Kaapana's base-installer accepts only these folders under /kaapana/tmp (anything else: exit 1).
INSTALLER_DIRS = {"plugins", "dags", "mounted_scripts", "extensions"}
#: The image reference Kaapana's build script and DAG installer scan operator files for.
IMAGE_PATTERN = re.compile(r'image=f"\{DEFAULT_REGISTRY\}/([a-z0-9-]+):\{KAAPANA_BUILD_VERSION\}"')


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``/kaapana/tmp`` of the DAG-installer image, rebuilt from the Dockerfile's COPY lines."""
    return Path(install(tmp_path_factory.mktemp("kaapana")))


def test_installer_accepts_the_layout(installed: Path) -> None:
    assert {p.name for p in installed.iterdir()} <= INSTALLER_DIRS
    dags = installed / "dags"
    assert sorted(p.name for p in dags.glob("dag_*.py")) == sorted(p.name for p in (REPO / "dags").glob("dag_*.py"))
    operators = dags / "cardiofm_operators"
    assert all("operator" in p.name for p in operators.glob("*.py") if p.name != "__init__.py")
    assert not list(dags.rglob("__pycache__"))
    for package in ("cardiofm_operators", "cardiofm"):  # modules, not DAG files: the DAG processor skips them
        assert (dags / package / ".airflowignore").read_text().splitlines()[-1] == ".*"


def test_installed_dags_import_with_nothing_else_on_the_path(installed: Path, tmp_path: Path) -> None:
    """Airflow puts the dags folder on sys.path; the image's cardiofm subset must be all the DAGs need."""
    probe = (
        "import json, sys\n"
        "from airflow.models import DagBag\n"
        f"bag = DagBag({str(installed / 'dags')!r}, include_examples=False)\n"
        "import cardiofm\n"
        "print(json.dumps({'errors': bag.import_errors, 'dags': sorted(bag.dags), 'cardiofm': cardiofm.__file__}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PYTHONPATH": str(installed / "dags"), "CARDIOFM_BACKEND": "local", "AIRFLOW_HOME": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}, json.dumps(result["errors"])[-3000:]
    assert result["dags"] == [
        "cardiofm-federated-join",
        "cardiofm-predict",
        "cardiofm-prepare",
        "cardiofm-pseudolabel",
        "cardiofm-train-local",
    ]
    assert result["cardiofm"].startswith(str(installed))  # the image's copy, not the source tree


def test_chart_follows_kaapanas_extension_contract() -> None:
    chart = yaml.safe_load((EXTENSION / "Chart.yaml").read_text())
    assert {"kaapanaworkflow", "gpurequired"} <= set(chart["keywords"])
    assert chart["version"] == "0.0.0"  # set by Kaapana's build; the DAG image carries the same tag
    deps = yaml.safe_load((EXTENSION / "requirements.yaml").read_text())["dependencies"]
    assert [(d["name"], d["version"]) for d in deps] == [("dag-installer-chart", "0.0.0")]
    values = yaml.safe_load((EXTENSION / "values.yaml").read_text())
    label = re.search(r'^LABEL IMAGE="([^"]+)"', (EXTENSION / "docker" / "Dockerfile").read_text(), re.M)
    assert label is not None
    assert values["global"]["image"] == label.group(1)
    assert values["global"]["action"] == "copy"
    for key, param in values["extension_params"].items():
        assert key in values["global"], f"extension_params.{key} sets global.{key}, which the chart must declare"
        assert param["definition"]
        assert param["type"] in {"string", "boolean", "list_single", "list_multi"}


def test_operator_images_use_kaapanas_naming(installed: Path) -> None:
    text = (installed / "dags" / "cardiofm_operators" / "kaapana_step_operator.py").read_text()
    names = IMAGE_PATTERN.findall(text)
    assert sorted(names) == ["cardiofm-processing", "cardiofm-segmenter", "cardiofm-trainer"]
