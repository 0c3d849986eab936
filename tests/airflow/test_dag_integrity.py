"""DAG integrity on Airflow 2.11: the DAGs import, their forms are valid, every task's env matches its step.

Run in the Airflow environment (`make dag-tests`). A DAG import error is the failure Kaapana users see
least clearly (the DAG just does not appear), so every backend's parse is checked here.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any, ClassVar

import pytest
from conftest import dag_bag

from cardiofm.contracts.kaapana import KaapanaContext
from cardiofm.contracts.steps import STEPS
from cardiofm.errors import ConfigError
from cardiofm_operators.step_operator_env import INSTALL_TIME_SETTINGS, STEP_VAR, fixed_env, form_env

DAG_IDS = {
    "cardiofm-prepare",
    "cardiofm-pseudolabel",
    "cardiofm-federated-join",
    "cardiofm-train-local",
    "cardiofm-predict",
}
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
#: Values for required form fields without a default, or left to install-time settings (what an admin gives).
#: Values for empty form fields: install-time settings an admin gives, and what a user must enter (no default).
EXAMPLES = {
    "superlink": "coordinator.example.org:9443",
    "pinned_fab_sha256": ["ab" * 32],
    "series_uids": ["1.2.826.0.1.3680043.8.498.1"],
}
JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "number": (int, float),
    "integer": int,
    "boolean": bool,
    "array": list,
}
KUBERNETES_ENV = {
    "CARDIOFM_IMAGE_REGISTRY": "registry.example.org/cardiofm",
    "CARDIOFM_IMAGE_TAG": "0.1.0",
    "CARDIOFM_DATA_PVC": "cardiofm-data",
}


@pytest.fixture(scope="module")
def bag() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        return dag_bag("local", mp)


def form_of(dag: Any) -> dict[str, Any]:
    return dag.default_args["ui_forms"]["workflow_form"]


def steps_of(dag: Any) -> dict[str, Any]:
    return {task.task_id: task for task in dag.tasks}


@pytest.mark.parametrize(
    ("backend", "extra"), [("local", {}), ("kubernetes", KUBERNETES_ENV)], ids=["local", "kubernetes"]
)
def test_dags_import_without_errors(backend: str, extra: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: Any = dag_bag(backend, monkeypatch, extra)
    assert parsed.import_errors == {}
    assert set(parsed.dags) == DAG_IDS


def test_an_unknown_backend_is_an_import_error_naming_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: Any = dag_bag("docker-compose", monkeypatch)
    assert set(parsed.import_errors)
    assert not parsed.dags
    assert all("kaapana, local, kubernetes" in err for err in parsed.import_errors.values())


def test_the_kubernetes_backend_without_its_settings_names_the_missing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: Any = dag_bag(
        "kubernetes", monkeypatch, {k: v for k, v in KUBERNETES_ENV.items() if k != "CARDIOFM_DATA_PVC"}
    )
    assert parsed.import_errors
    assert all("CARDIOFM_DATA_PVC" in err for err in parsed.import_errors.values())


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_dag_follows_kaapanas_conventions(bag: Any, dag_id: str) -> None:
    dag = bag.dags[dag_id]
    args = dag.default_args
    assert args["ui_visible"] is True
    forms = args["ui_forms"]
    json.dumps(forms)  # the UI receives it as JSON
    form = forms["workflow_form"]
    assert form["type"] == "object"
    assert set(form["required"]) <= set(form["properties"])
    assert forms["data_form"] == {}  # the DAG reads the PACS or the site's folders, not a Kaapana dataset
    for key, field in form["properties"].items():
        assert field.get("title"), f"{key} has no title"
        if "default" in field:
            assert isinstance(field["default"], JSON_TYPES[field["type"]]), key
            if "enum" in field:
                assert field["default"] in field["enum"], key
    assert dag.schedule_interval is None
    for task in dag.tasks:
        assert K8S_NAME.match(task.task_id), task.task_id
        assert task.retries == 0


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_every_form_key_and_fixed_setting_is_a_step_parameter(bag: Any, dag_id: str) -> None:
    dag = bag.dags[dag_id]
    tasks = steps_of(dag)
    read = set().union(*(STEPS[t.step].env_names() for t in tasks.values()))
    for key in form_of(dag)["properties"]:
        assert key.upper() in read, f"form key {key} is read by no step of {dag_id}"
    for task in tasks.values():
        assert task.env_vars[STEP_VAR] == task.step
        assert set(task.env_vars) - {STEP_VAR} <= STEPS[task.step].env_names(), task.task_id


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_every_required_parameter_is_given(bag: Any, dag_id: str) -> None:
    """A step's required field comes from the DAG, the form or Kaapana's contract: none is left unset."""
    dag = bag.dags[dag_id]
    form = form_of(dag)
    given = {k.upper() for k in form["properties"]}
    for task in steps_of(dag).values():
        model = STEPS[task.step]
        required = {name.upper() for name, f in model.model_fields.items() if f.is_required()}
        missing = required - given - set(task.env_vars)
        assert not missing, f"{task.task_id}: {missing} set by nothing"
        install_time = {f.upper() for f in INSTALL_TIME_SETTINGS.get(task.step, ())}
        for name in required & given - install_time:
            assert name.lower() in form["required"], f"{task.task_id} needs {name}: the form must require it"


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_form_defaults_as_kaapana_sends_them_are_read_by_every_step(bag: Any, dag_id: str) -> None:
    """Kaapana passes each form value as ``str(value)``: the defaults (and examples) must parse in every step."""
    dag = bag.dags[dag_id]
    props = form_of(dag)["properties"]
    # empty install-time fields are filled by the extension's settings: an admin's value stands in for them here
    values = {
        k: p["default"] if p.get("default") not in (None, "", []) else EXAMPLES.get(k, "") for k, p in props.items()
    }
    env = form_env({"workflow_form": values})
    for task in steps_of(dag).values():
        params = STEPS[task.step].from_env({**task.env_vars, **env})
        for key, value in values.items():
            if key in type(params).model_fields and value not in ("", None):
                got = getattr(params, key)
                assert str(got) == str(value) or got == value or [str(v) for v in got] == value, (task.task_id, key)


def test_prepare_chains_folders_as_kaapana_does(bag: Any) -> None:
    """Each task reads its upstream task's output folder; the first reads the PACS."""
    dag = bag.dags["cardiofm-prepare"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order == [
        "stage-studies",
        "select-series",
        "convert",
        "crop-heart",
        "import-labels",
        "build-dataset",
        "prepare-report",
    ]
    tasks = steps_of(dag)
    assert tasks["stage-studies"].operator_in_dir == "pacs"
    for up, down in itertools.pairwise(order):
        assert tasks[down].operator_in_dir == tasks[up].operator_out_dir == up
    assert tasks["prepare-report"].trigger_rule == "all_done"  # the reports are written also when a step failed


def test_a_wrong_fixed_setting_fails_when_the_dag_is_parsed() -> None:
    with pytest.raises(ConfigError, match="margin_mm"):
        fixed_env("crop-heart", {"margin_mm": -3})
    with pytest.raises(ConfigError, match="not a cardiofm step"):
        fixed_env("crop-lungs", {})


def test_local_task_env_holds_kaapanas_contract_and_the_form(bag: Any, tmp_path: Any) -> None:
    task = steps_of(bag.dags["cardiofm-prepare"])["convert"]

    class Run:
        conf: ClassVar = {"workflow_form": {"dataset_dir": "/data/ds", "margin_mm": 12.5, "username": "admin"}}

    base = {"PATH": "/usr/bin", "CARDIOFM_WORKFLOWS_DIR": str(tmp_path)}
    env = task.step_env({"run_id": "manual__2026-12-07T01:00:00+00:00", "dag_run": Run()}, base)
    ctx = KaapanaContext.from_env(env)
    assert ctx.workflow_dir == tmp_path / "manual__2026-12-07T01_00_00_00_00"
    assert ctx.run_id == "manual__2026-12-07T01:00:00+00:00"
    assert (ctx.operator_in_dir, ctx.operator_out_dir, ctx.task_id) == ("select-series", "convert", "convert")
    assert (env["DATASET_DIR"], env["MARGIN_MM"], env["USERNAME"], env["PATH"]) == (
        "/data/ds",
        "12.5",
        "admin",
        "/usr/bin",
    )
    assert env[STEP_VAR] == "convert"


def test_kubernetes_pod_carries_image_volume_resources_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: Any = dag_bag("kubernetes", monkeypatch, KUBERNETES_ENV)
    task = steps_of(parsed.dags["cardiofm-prepare"])["crop-heart"]

    class Run:
        conf: ClassVar = {"workflow_form": {"segmenter": "fallback"}}

    context = {"run_id": "manual__1", "dag_run": Run()}
    env = task.run_env(context)
    assert env["WORKFLOW_DIR"] == "/data/workflows/manual__1"
    assert (env["OPERATOR_IN_DIR"], env["OPERATOR_OUT_DIR"], env["SEGMENTER"]) == ("convert", "crop-heart", "fallback")
    assert env["CARDIOFM_DATA_ROOT"] == "/data"
    assert env[STEP_VAR] == "crop-heart"
    assert task.image == "registry.example.org/cardiofm/cardiofm-segmenter:0.1.0"
    assert task.container_resources.limits["nvidia.com/gpu"] == "1"
    assert task.volumes[0].persistent_volume_claim.claim_name == "cardiofm-data"
    assert task.skip_on_exit_code == [126] or 126 in task.skip_on_exit_code
