"""Fixtures of the Airflow-environment tests: a scratch AIRFLOW_HOME and the DAG bag per backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
#: cardiofm's own environment (make setup): the local backend runs the steps in it.
STEP_PYTHON = REPO / ".venv" / "bin" / "python"

# Airflow reads its home when first imported: a scratch one, never the developer's
_HOME = Path(os.environ.get("CARDIOFM_TEST_AIRFLOW_HOME", "/tmp")) / f"cardiofm-airflow-tests-{os.getpid()}"
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.setdefault("CARDIOFM_BACKEND", "local")


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> Path:
    """A migrated SQLite metadata database (dag.test() and task runs need it)."""
    _HOME.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    return _HOME


@pytest.fixture(scope="session")
def step_python() -> str:
    """The interpreter the local backend runs steps in; built by `make setup`, so its absence is an error."""
    assert STEP_PYTHON.is_file(), f"{STEP_PYTHON} not found: run `make setup` first"
    return str(STEP_PYTHON)


def dag_bag(backend: str, monkeypatch: pytest.MonkeyPatch, extra: dict[str, str] | None = None) -> object:
    """The DAGs as Airflow parses them with ``CARDIOFM_BACKEND=backend``."""
    from airflow.models import DagBag

    monkeypatch.setenv("CARDIOFM_BACKEND", backend)
    for key, value in (extra or {}).items():
        monkeypatch.setenv(key, value)
    return DagBag(str(DAGS), include_examples=False)
