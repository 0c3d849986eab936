"""cardiofm's DAGs and ``kaapana`` backend under Kaapana 0.6.0's real Airflow plugin, out of cluster.

1. The installed dags folder parses with the real ``KaapanaBaseOperator``: four DAGs, every task a
   ``CardiofmKaapanaOperator``.
2. The operator contract: each task's ``execute`` (with Kaapana's two decorators, as Airflow calls it) builds
   its pod with the real task runner; only the Kubernetes API is fake, so the pod checked here is the pod
   Kaapana would create: image, environment, secrets, labels, resources, volumes, namespace.
3. The container contract: cardiofm's params models read that pod's environment.
4. Whole runs (``dag.test()``) and Kaapana's exit-code semantics (126 skips the task).
"""

from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.exceptions import AirflowException, AirflowSkipException
from airflow.models import DAG, DagBag
from airflow.utils import timezone
from airflow.utils.state import DagRunState, TaskInstanceState
from airflow.utils.types import DagRunType
from conftest import AIRFLOW_WORKFLOW_DIR, DAGS, PLATFORM_ENV
from kubernetes.client import models as k8s

#: The DAGs' tasks in order, and the image profile each runs in.
DAG_TASKS = {
    "cardiofm-prepare": [
        ("stage-studies", "processing"),
        ("select-series", "processing"),
        ("convert", "processing"),
        ("crop-heart", "segmenter"),
        ("import-labels", "processing"),
        ("build-dataset", "processing"),
        ("prepare-report", "processing"),
    ],
    "cardiofm-pseudolabel": [("site-pseudolabel", "trainer")],
    "cardiofm-federated-join": [("site-join", "trainer")],
    "cardiofm-train-local": [("train-local", "trainer")],
    "cardiofm-predict": [
        ("stage-series", "processing"),
        ("convert", "processing"),
        ("crop-heart", "segmenter"),
        ("predict", "trainer"),
        ("measure", "trainer"),
        ("export-dicom", "processing"),
        ("send-results", "processing"),
    ],
}
DAG_FILES = {
    "cardiofm-prepare": "dag_cardiofm_prepare.py",
    "cardiofm-pseudolabel": "dag_cardiofm_pseudolabel.py",
    "cardiofm-federated-join": "dag_cardiofm_federated_join.py",
    "cardiofm-train-local": "dag_cardiofm_train_local.py",
    "cardiofm-predict": "dag_cardiofm_predict.py",
}
TASKS = [(dag_id, task_id, profile) for dag_id, tasks in DAG_TASKS.items() for task_id, profile in tasks]
#: Values an admin gives for form fields left empty for the extension's install-time settings.
EXAMPLES = {"superlink": "coordinator.example.org:9443", "pinned_fab_sha256": ["ab" * 32]}
#: The project Kaapana's backend puts into every run's conf (``project_form``), as its aii-service returns it;
#: not the admin project, so that the pod's namespace shows it was read (Kaapana's fallback is project-admin).
PROJECT = {
    "id": "6d1c6d52-0b3f-4bd8-9d43-2bcbd4a6a5b1",
    "name": "cardiology",
    "description": "TAVI planning data of site A",
    "external_id": None,
    "kubernetes_namespace": "project-cardiology",
    "s3_bucket": "project-cardiology",
    "opensearch_index": "project_cardiology",
}
DATA_ROOT = "/kaapana/mounted/data"
#: Env secrets (variable: (Secret, key, optional)) each step's pod gets besides Kaapana's own.
STEP_SECRETS: dict[str, dict[str, tuple[str, str, bool | None]]] = {
    "stage-studies": {"CARDIOFM_PACS_PASSWORD": ("cardiofm-pacs", "password", True)},
    "site-join": {
        "CARDIOFM_CA_CERT_PEM": ("cardiofm-site-bundle", "ca.pem", None),
        "CARDIOFM_SITE_KEY_PEM": ("cardiofm-site-bundle", "site.key", None),
        "CARDIOFM_DEFAULT_SUPERLINK": ("cardiofm-site-settings", "superlink", True),
        "CARDIOFM_DEFAULT_PINNED_FAB_SHA256": ("cardiofm-site-settings", "pinned_fab_sha256", True),
    },
}
KAAPANA_SECRETS = {"KAAPANA_PROJECT_USER_PASSWORD", "KAAPANA_PROJECT_USER_NAME", "KAAPANA_CLIENT_SECRET"}
#: Steps whose pods reach outside the cluster (the PACS, the coordinator).
EXTERNAL = {"stage-studies", "site-join"}
MEBI = 1024**2


# --- the plugin, the dags ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kbo(airflow_db: Path) -> Iterator[Any]:
    """Kaapana's ``KaapanaBaseOperator`` module, its view of the workflow-data volume moved to scratch."""
    import kaapana.operators.KaapanaBaseOperator as module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "AIRFLOW_WORKFLOW_DIR", str(AIRFLOW_WORKFLOW_DIR))
        yield module


@pytest.fixture(scope="session")
def bag(kbo: Any) -> DagBag:
    return DagBag(str(DAGS), include_examples=False)


@pytest.fixture(scope="session")
def dags(bag: DagBag) -> dict[str, DAG]:
    if bag.import_errors:
        pytest.fail(f"the installed DAGs do not import under Kaapana's plugin: {_errors(bag)}")
    return bag.dags


def fresh_dag(dag_id: str) -> DAG:
    """The DAG parsed anew: ``execute`` changes its operator (env, secrets, volumes), as Kaapana's does."""
    parsed = DagBag(str(DAGS / DAG_FILES[dag_id]), include_examples=False)
    if parsed.import_errors:
        pytest.fail(f"{DAG_FILES[dag_id]} does not import under Kaapana's plugin: {_errors(parsed)}")
    return parsed.dags[dag_id]


def _errors(parsed: DagBag) -> str:
    return "; ".join(f"{Path(f).name}: {e.strip().splitlines()[-1]}" for f, e in parsed.import_errors.items())


def run_conf(dag: DAG) -> dict[str, Any]:
    """A run's conf as Kaapana's backend sends it: the form's defaults (and an admin's values), the project."""
    props = dag.default_args["ui_forms"]["workflow_form"]["properties"]
    form = {
        k: p["default"] if p.get("default") not in (None, "", []) else EXAMPLES.get(k, "") for k, p in props.items()
    }
    return {"workflow_form": {**form, "username": "kaapana"}, "data_form": {}, "project_form": PROJECT}


# --- a Kubernetes API that records ---------------------------------------------------------------------------


class FakeCluster:
    """The Kubernetes API as Kaapana's plugin and task runner use it: records the objects, never connects."""

    def __init__(self) -> None:
        self.pods: dict[str, tuple[str, k8s.V1Pod]] = {}  # by TASK_ID: (namespace, pod)
        self.config_maps: dict[str, tuple[str, k8s.V1ConfigMap]] = {}
        self.exit_codes: dict[str, tuple[int, str]] = {}  # by TASK_ID: (exit code, reason); default success
        self.deleted: list[str] = []

    def pod(self, task_id: str) -> k8s.V1Pod:
        assert task_id in self.pods, f"no pod for {task_id}; pods: {sorted(self.pods)}"
        return self.pods[task_id][1]

    def _task_of(self, name: str) -> str:
        for task_id, (_, pod) in self.pods.items():
            if pod.metadata.name == name:
                return task_id
        raise AssertionError(f"no pod {name}")

    def create_namespaced_pod(self, namespace: str, body: k8s.V1Pod, **_: Any) -> k8s.V1Pod:
        env = {e.name: e.value for e in body.spec.containers[0].env}
        self.pods[env["TASK_ID"]] = (namespace, body)
        return body

    def create_namespaced_config_map(self, namespace: str, body: k8s.V1ConfigMap, **_: Any) -> k8s.V1ConfigMap:
        self.config_maps[body.metadata.name] = (namespace, body)
        return body

    def read_namespaced_pod_log(self, name: str, namespace: str, **_: Any) -> Iterator[bytes]:
        return iter([f"cardiofm step {self._task_of(name)}: done\n".encode()])

    def read_namespaced_pod(self, name: str, namespace: str, **_: Any) -> k8s.V1Pod:
        code, reason = self.exit_codes.get(self._task_of(name), (0, "Completed"))
        terminated = k8s.V1ContainerStateTerminated(exit_code=code, reason=reason, message="")
        state = k8s.V1ContainerState(terminated=terminated)
        status = k8s.V1ContainerStatus(name="main", state=state, image="", image_id="", ready=False, restart_count=0)
        return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=name), status=k8s.V1PodStatus(container_statuses=[status]))

    def delete_namespaced_pod(self, name: str, namespace: str, **_: Any) -> None:
        self.deleted.append(name)

    def phase(self, task_run: Any, states: Any = (), timeout: int = 5) -> str:
        """``KubernetesRunner.wait_for_task_status``: the pod has ended, with its task's exit code."""
        from task_api.runners.KubernetesRunner import PodPhase

        code, _ = self.exit_codes.get(self._task_of(task_run.id), (0, ""))
        return PodPhase.SUCCEEDED if code == 0 else PodPhase.FAILED


@pytest.fixture
def cluster(kbo: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    """Kaapana's plugin and task runner talk to a FakeCluster; nothing else of them is replaced."""
    import signal

    from task_api.runners.KubernetesRunner import KubernetesRunner

    fake = FakeCluster()
    monkeypatch.setattr(KubernetesRunner, "api", fake)
    monkeypatch.setattr(
        KubernetesRunner, "wait_for_task_status", classmethod(lambda cls, *a, **kw: fake.phase(*a, **kw))
    )
    monkeypatch.setattr(kbo.client, "CoreV1Api", lambda *a, **kw: fake)
    # in a pod this succeeds; outside, 0.6.0's fallback names an unimported `config` (NameError), so skip it
    monkeypatch.setattr(kbo.k8s_config_loader, "load_incluster_config", lambda *a, **kw: None)
    handler = signal.getsignal(signal.SIGTERM)  # execute() installs its own
    yield fake
    signal.signal(signal.SIGTERM, handler)


def start_run(dag: DAG, conf: dict[str, Any]) -> Any:
    """A dag run as Kaapana's backend triggers it (run id from the plugin's ``generate_run_id``)."""
    from kaapana.blueprints.kaapana_utils import generate_run_id

    now = timezone.utcnow()
    return dag.create_dagrun(
        run_id=generate_run_id(dag.dag_id),
        run_type=DagRunType.MANUAL,
        state=DagRunState.RUNNING,
        execution_date=now,
        data_interval=(now, now),
        conf=conf,
        external_trigger=True,
    )


def kaapana_execute(kbo: Any) -> Any:
    """``KaapanaBaseOperator.execute`` below Airflow's ExecutorSafeguard: Kaapana's decorators, then its body."""
    layers = [kbo.KaapanaBaseOperator.execute]
    while hasattr(layers[-1], "__wrapped__"):
        layers.append(layers[-1].__wrapped__)
    # functools.wraps copies __module__: the code's file tells the layers apart
    assert [Path(f.__code__.co_filename).stem for f in layers] == [
        "baseoperator",  # Airflow's ExecutorSafeguard (satisfied when a TaskInstance runs the task)
        "HelperCaching",  # Kaapana's @cache_operator_output
        "HelperFederated",  # Kaapana's @federated_sharing_decorator
        "KaapanaBaseOperator",
    ]
    assert layers[-1] is inspect.unwrap(kbo.KaapanaBaseOperator.execute)
    return layers[1]


def run_task(kbo: Any, dag: DAG, task_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    """Execute one task as Airflow does (``execute(context=...)``), with the context of a real dag run."""
    ti = start_run(dag, conf).get_task_instance(task_id)
    ti.task = dag.get_task(task_id)
    context = ti.get_template_context()
    kaapana_execute(kbo)(ti.task, context=context)
    return context


def env_of(pod: k8s.V1Pod) -> dict[str, str]:
    """The container's plain variables (secrets come as ``value_from``)."""
    return {e.name: e.value for e in pod.spec.containers[0].env if e.value_from is None}


def secrets_of(pod: k8s.V1Pod) -> dict[str, tuple[str, str, bool | None]]:
    refs = [e for e in pod.spec.containers[0].env if e.value_from is not None]
    return {
        e.name: (
            e.value_from.secret_key_ref.name,
            e.value_from.secret_key_ref.key,
            e.value_from.secret_key_ref.optional,
        )
        for e in refs
    }


def mebibytes(quantity: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti)?", quantity)
    assert match, quantity
    return float(match.group(1)) * {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2, None: 1 / MEBI}[match.group(2)]


# --- 1. parse --------------------------------------------------------------------------------------------------


def test_installed_dags_import_with_kaapanas_plugin(bag: DagBag) -> None:
    assert bag.import_errors == {}, _errors(bag)
    assert sorted(bag.dags) == sorted(DAG_TASKS)


def test_the_image_subset_and_the_real_plugin_are_what_is_imported(kbo: Any) -> None:
    import kaapana

    import cardiofm
    import cardiofm_operators

    for module in (cardiofm, cardiofm_operators):  # the image's copies, not the source tree
        assert Path(module.__file__).is_relative_to(DAGS), module.__file__
    assert Path(kaapana.__file__).parent.parent.samefile(Path(os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"]))


def test_inside_kaapana_the_backend_is_kaapana_without_being_named(kbo: Any) -> None:
    """The extension cannot set Airflow's environment: where the plugin imports, an unset backend is ``kaapana``."""
    from cardiofm_operators.step_operator_env import backend_from_env

    assert backend_from_env({}) == "kaapana"


@pytest.mark.parametrize("dag_id", sorted(DAG_TASKS))
def test_every_task_is_a_kaapana_operator(dags: dict[str, DAG], kbo: Any, dag_id: str) -> None:
    from cardiofm_operators.step_operator_env import RESOURCES

    dag = dags[dag_id]
    assert [t.task_id for t in dag.topological_sort()] == [task_id for task_id, _ in DAG_TASKS[dag_id]]
    previous = "pacs"
    for task_id, profile in DAG_TASKS[dag_id]:
        task = dag.get_task(task_id)
        assert isinstance(task, kbo.KaapanaBaseOperator)
        assert (type(task).__name__, type(task).__module__) == (
            "CardiofmKaapanaOperator",
            "cardiofm_operators.kaapana_step_operator",
        )
        assert (task.operator_in_dir, task.operator_out_dir) == (previous, task_id)
        res = RESOURCES[profile]
        assert (task.ram_mem_mb, task.gpu_mem_mb) == (res.ram_mem_mb, res.gpu_mem_mb)  # GPU_SUPPORT=True here
        assert task.pool == "NODE_RAM"
        assert task.pool_slots == res.ram_mem_mb
        want_timeout = timedelta(hours=49) if task_id == "site-join" else res.execution_timeout
        assert task.execution_timeout == want_timeout
        assert task.retries == 0  # the DAG's default_args win over Kaapana's retries=1
        assert task.env_vars["CARDIOFM_STEP"] == task_id
        assert task.pod_resources.requests["memory"] == f"{res.ram_mem_mb}Mi"
        # Kaapana 0.6 puts `secrets` into the container's env list as they are: V1EnvVar with a secret_key_ref
        assert all(isinstance(s, k8s.V1EnvVar) and s.value_from.secret_key_ref for s in task.secrets), task.secrets
        previous = task_id
    if dag_id == "cardiofm-prepare":
        assert dag.get_task("prepare-report").trigger_rule == "all_done"


# --- 2. the operator contract: the pod Kaapana creates --------------------------------------------------------


@pytest.mark.parametrize(("dag_id", "task_id", "profile"), TASKS, ids=[t for _, t, _ in TASKS])
def test_pod_as_kaapana_creates_it(
    kbo: Any, cluster: FakeCluster, dags: dict[str, DAG], dag_id: str, task_id: str, profile: str
) -> None:
    from cardiofm_operators.step_operator_env import RESOURCES

    dag = fresh_dag(dag_id)
    conf = run_conf(dag)
    context = run_task(kbo, dag, task_id, conf)
    run_id = context["run_id"]
    namespace, pod = cluster.pods[task_id]
    container = pod.spec.containers[0]

    assert namespace == PROJECT["kubernetes_namespace"]
    assert container.name == "main"
    assert pod.spec.restart_policy == "Never"
    registry, version = PLATFORM_ENV["DEFAULT_REGISTRY"], PLATFORM_ENV["KAAPANA_BUILD_VERSION"]
    assert container.image == f"{registry}/cardiofm-{profile}:{version}"
    assert [s.name for s in pod.spec.image_pull_secrets] == ["registry-secret"]
    assert not container.command
    assert not container.args  # Kaapana 0.6 passes neither: the image's entrypoint runs CARDIOFM_STEP

    names = [e.name for e in container.env]
    assert len(names) == len(set(names)), "a variable is set twice"
    env = env_of(pod)
    assert all(isinstance(v, str) for v in env.values()), {k: v for k, v in env.items() if not isinstance(v, str)}
    chain = [t for t, _ in DAG_TASKS[dag_id]]
    position = chain.index(task_id)
    assert {
        "CARDIOFM_STEP": task_id,
        "CARDIOFM_DATA_ROOT": DATA_ROOT,
        "WORKFLOW_DIR": f"{DATA_ROOT}/{run_id}",
        "BATCH_NAME": "batch",
        "OPERATOR_IN_DIR": chain[position - 1] if position else "pacs",
        "OPERATOR_OUT_DIR": task_id,
        "RUN_ID": run_id,
        "DAG_ID": dag_id,
        "TASK_ID": task_id,
    }.items() <= env.items()
    for key, value in conf["workflow_form"].items():
        assert env[key.upper()] == str(value), key

    secrets = secrets_of(pod)
    assert set(secrets) == KAAPANA_SECRETS | set(STEP_SECRETS.get(task_id, {}))
    for var, (secret, key, optional) in STEP_SECRETS.get(task_id, {}).items():
        assert secrets[var][:2] == (secret, key), var
        assert bool(secrets[var][2]) == bool(optional), f"{var}: optional={secrets[var][2]}"

    labels = pod.metadata.labels
    assert labels["kaapana.ai/type"] == "processing-container"
    assert (labels.get("network-access-external-ips") == "true") == (task_id in EXTERNAL)
    proxy = PLATFORM_ENV["PROXY"]
    if task_id == "site-join":
        assert (env["http_proxy"], env["https_proxy"]) == (proxy, proxy)
    else:
        assert "http_proxy" not in env

    res = RESOURCES[profile]
    requests, limits = container.resources.requests, container.resources.limits
    assert mebibytes(requests["memory"]) >= res.ram_mem_mb  # the task runner adds 10% to what Kaapana asks
    assert mebibytes(limits["memory"]) >= res.ram_mem_mb + 100
    assert limits["nvidia.com/gpu"] == (1 if profile in ("segmenter", "trainer") else 0)

    mounts = {m.mount_path: m for m in container.volume_mounts}
    volumes = {v.name: v for v in pod.spec.volumes}
    data = volumes[mounts[DATA_ROOT].name]
    assert data.persistent_volume_claim.claim_name == "workflow-data-pv-claim"
    conf_mount = mounts[f"{DATA_ROOT}/{run_id}/conf/conf.json"]
    assert conf_mount.read_only
    config_map_name = volumes[conf_mount.name].config_map.name
    cm_namespace, config_map = cluster.config_maps[config_map_name]
    assert cm_namespace == namespace
    assert json.loads(config_map.data["conf.json"]) == conf


def test_without_gpu_support_no_gpu_is_asked(kbo: Any, dags: dict[str, DAG], monkeypatch: pytest.MonkeyPatch) -> None:
    from cardiofm_operators import step_task

    monkeypatch.setattr(kbo, "GPU_SUPPORT", False)
    with DAG("gpu-probe", schedule=None, start_date=timezone.datetime(2024, 1, 1)) as dag:
        task = step_task(dag, "crop-heart")
    assert task.gpu_mem_mb is None
    assert task.pod_resources.limits["nvidia.com/gpu"] == 0
    assert task.pool == "NODE_RAM"


# --- 3. the container contract: cardiofm reads the pod's environment ------------------------------------------


@pytest.mark.parametrize(("dag_id", "task_id", "profile"), TASKS, ids=[t for _, t, _ in TASKS])
def test_step_reads_the_pods_environment(
    kbo: Any, cluster: FakeCluster, dags: dict[str, DAG], dag_id: str, task_id: str, profile: str
) -> None:
    from cardiofm.contracts.kaapana import KaapanaContext
    from cardiofm.contracts.steps import STEPS

    dag = fresh_dag(dag_id)
    conf = run_conf(dag)
    run_task(kbo, dag, task_id, conf)
    env = env_of(cluster.pod(task_id))
    model = STEPS[env["CARDIOFM_STEP"]]
    assert model.image == profile
    params = model.from_env(env)
    for key, value in conf["workflow_form"].items():
        if key in type(params).model_fields and value not in ("", None):
            got = getattr(params, key)
            assert str(got) == str(value) or got == value or [str(v) for v in got] == value, key
    if model.batch:
        ctx = KaapanaContext.from_env(env)
        assert ctx.batch_dir == Path(env["WORKFLOW_DIR"]) / "batch"
        assert (ctx.operator_in_dir, ctx.operator_out_dir, ctx.task_id) == (
            env["OPERATOR_IN_DIR"],
            task_id,
            task_id,
        )


# --- 4. whole runs, exit codes ---------------------------------------------------------------------------------


def test_exit_codes_are_kaapanas(kbo: Any) -> None:
    from cardiofm.errors import EXIT_SKIP
    from cardiofm_operators.step_operator_env import EXIT_SKIP as OPERATOR_EXIT_SKIP

    assert kbo.KAAPANA_SKIP_TASK_RUN_RETURN_CODE == EXIT_SKIP == OPERATOR_EXIT_SKIP == 126


@pytest.mark.parametrize(
    ("code", "reason", "raised", "match"),
    [
        (126, "Error", AirflowSkipException, "skipped"),
        (2, "Error", AirflowException, "failed"),
        (137, "OOMKilled", AirflowException, "OutOfMemory"),
    ],
    ids=["skip", "fail", "oom"],
)
def test_exit_code_of_the_container_decides_the_task(
    kbo: Any, cluster: FakeCluster, dags: dict[str, DAG], code: int, reason: str, raised: type, match: str
) -> None:
    dag = fresh_dag("cardiofm-prepare")
    cluster.exit_codes["convert"] = (code, reason)
    with pytest.raises(raised, match=match) as info:
        run_task(kbo, dag, "convert", run_conf(dag))
    assert type(info.value) is raised


def test_prepare_runs_end_to_end(cluster: FakeCluster, dags: dict[str, DAG]) -> None:
    """``dag.test()``: Airflow runs each task (safeguard, params, callbacks) and Kaapana starts one pod each."""
    dag = fresh_dag("cardiofm-prepare")
    run = dag.test(run_conf=run_conf(dag))
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert set(states.values()) == {TaskInstanceState.SUCCESS}, states
    assert list(cluster.pods) == [task_id for task_id, _ in DAG_TASKS["cardiofm-prepare"]]


def test_a_skipped_step_skips_the_chain_but_not_the_report(cluster: FakeCluster, dags: dict[str, DAG]) -> None:
    dag = fresh_dag("cardiofm-prepare")
    cluster.exit_codes["select-series"] = (126, "Error")
    run = dag.test(run_conf=run_conf(dag))
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["stage-studies"] == TaskInstanceState.SUCCESS
    for task_id in ("select-series", "convert", "crop-heart", "import-labels", "build-dataset"):
        assert states[task_id] == TaskInstanceState.SKIPPED, states
    assert states["prepare-report"] == TaskInstanceState.SUCCESS, states  # trigger_rule all_done
    assert "prepare-report" in cluster.pods
