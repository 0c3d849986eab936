"""The ``local`` backend runs the real ``cardiofm step`` in cardiofm's environment and maps its exit codes.

Exit 126 skips the task; a settings error is caught before anything starts, naming the variable; any other
exit fails the task with what the code means. Driven through the task's ``execute`` as Airflow calls it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

import pytest
from airflow.exceptions import AirflowException, AirflowSkipException
from conftest import dag_bag


class Run:
    conf: ClassVar[dict[str, Any]] = {"workflow_form": {}}


def tasks(monkeypatch: pytest.MonkeyPatch, dag_id: str) -> dict[str, Any]:
    parsed: Any = dag_bag("local", monkeypatch)
    return {t.task_id: t for t in parsed.dags[dag_id].tasks}


def execute(task: Any, run_id: str, form: dict[str, Any] | None = None) -> None:
    run = Run()
    run.conf = {"workflow_form": form or {}}
    # Airflow wraps execute in a guard that refuses direct calls; call the operator's own method
    inspect.unwrap(type(task).execute)(task, {"run_id": run_id, "dag_run": run})


@pytest.fixture
def local_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, step_python: str) -> Path:
    monkeypatch.setenv("CARDIOFM_PYTHON", step_python)
    monkeypatch.setenv("CARDIOFM_WORKFLOWS_DIR", str(tmp_path / "workflows"))
    return tmp_path / "workflows"


def test_an_empty_batch_skips_the_task(local_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (local_env / "run-1" / "batch").mkdir(parents=True)
    with pytest.raises(AirflowSkipException, match="nothing to do"):
        execute(tasks(monkeypatch, "cardiofm-prepare")["convert"], "run-1")


def test_a_missing_required_setting_fails_before_starting(local_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AirflowException, match="SITE_CONFIG"):
        execute(tasks(monkeypatch, "cardiofm-prepare")["import-labels"], "run-2")
    assert not (local_env / "run-2").exists()  # nothing was started


def test_a_failing_step_reports_its_exit_code_and_meaning(
    local_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "no-site" / "site.yaml"
    with pytest.raises(AirflowException, match=r"exit code 2: ConfigError"):
        execute(tasks(monkeypatch, "cardiofm-prepare")["stage-studies"], "run-3", {"site_config": str(missing)})


def test_without_a_step_interpreter_the_error_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CARDIOFM_PYTHON", raising=False)
    monkeypatch.delenv("CARDIOFM_PYTHON_TRAINER", raising=False)
    monkeypatch.setenv("CARDIOFM_WORKFLOWS_DIR", str(tmp_path))
    form = {"dataset": str(tmp_path / "ds"), "work_dir": str(tmp_path / "work")}
    with pytest.raises(AirflowException, match="CARDIOFM_PYTHON_TRAINER or CARDIOFM_PYTHON"):
        execute(tasks(monkeypatch, "cardiofm-pseudolabel")["site-pseudolabel"], "run-4", form)
