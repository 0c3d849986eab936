"""Local federated work at a site: only trained tensors leave, with honest counts and no identifiers."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid as FlowerGrid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from cardiofm.constants import TASK_LANDMARKS
from cardiofm.contracts.dataset import DatasetManifest, ManifestCase, SourceRef
from cardiofm.contracts.federated_run import FederatedRunConfig, SiteNodeConfig, check_version
from cardiofm.contracts.preprocessing import PreprocessingConfig
from cardiofm.errors import (
    CardioFMError,
    ConfigError,
    FederationTimeoutError,
    InputDataError,
    MissingResourceError,
)
from cardiofm.federated import client_app, server_app, task
from cardiofm.federated.fab import app_pyproject, default_run_config
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.nifti import save_nifti
from cardiofm.labels.formats import write_landmarks_json
from cardiofm.models.config import ModelConfig
from cardiofm.models.registry import BACKBONE, build_model, group_of
from cardiofm.training.checkpoint import load_checkpoint, save_checkpoint
from cardiofm.training.config import TrainConfig

SHAPE = (24, 24, 24)
SPACING_MM = 2.0
STUDY_UID = "1.2.826.0.1.3680043.8.498.11111111111111"
SERIES_UID = "1.2.826.0.1.3680043.8.498.22222222222222"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny models on a shared CPU run many times faster without thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _case(root: Path, case_id: str, tasks: list[str], rng: np.random.Generator) -> ManifestCase:
    grid = Grid(shape=SHAPE, spacing_mm=(SPACING_MM,) * 3, origin_lps_mm=(0.0, 0.0, 0.0))
    folder = root / "cases" / case_id
    image = rng.normal(0.0, 100.0, SHAPE).astype(np.float32)
    image[8:16, 8:16, 8:16] += 400.0
    save_nifti(folder / "image.nii.gz", image, grid)
    names: list[str] = []
    if "landmarks" in tasks:
        names = list(TASK_LANDMARKS["landmarks"])
        points = {n: (16.0 + 3 * i, 20.0, 24.0 - 2 * i) for i, n in enumerate(names)}
        write_landmarks_json(folder / "labels" / "landmarks.json", points)
    if "calcification" in tasks:
        mask = np.zeros(SHAPE, dtype=np.uint8)
        mask[10:13, 10:13, 10:13] = 1
        save_nifti(folder / "labels" / "calcification.nii.gz", mask, grid)
    return ManifestCase(
        case_id=case_id,
        split="train",
        tasks=tasks,
        landmarks=names,
        source=SourceRef(study_uid=f"{STUDY_UID}.{case_id[-1]}", series_uid=f"{SERIES_UID}.{case_id[-1]}"),
        shape=SHAPE,
        spacing_mm=(SPACING_MM,) * 3,
    )


def _site(tmp_path: Path, name: str, case_tasks: list[list[str]]) -> SiteNodeConfig:
    rng = np.random.default_rng(7)
    root = tmp_path / name / "dataset"
    cases = [_case(root, f"case-{name}-{n:04d}", tasks, rng) for n, tasks in enumerate(case_tasks)]
    manifest = DatasetManifest(site_id=name, created_with="test", split_seed=0, test_fraction=0.0, cases=cases)
    (root / "manifest.json").write_text(manifest.model_dump_json())
    return SiteNodeConfig(dataset=root, work_dir=tmp_path / name / "work")


def _case_ids(site: SiteNodeConfig) -> list[str]:
    return client_app.private_identifiers(site)


def _teacher_spec(task_name: str = "landmarks") -> task.StageSpec:
    return task.StageSpec(
        stage=f"teacher:{task_name}",
        model=ModelConfig.teacher(task_name, filters=(4, 8, 16, 32)),
        train=TrainConfig(
            tasks=(task_name,),
            patch_size=(16, 16, 16),
            batch_size=1,
            steps=2,
            warmup_steps=0,
            augment=False,
            preprocessing=PreprocessingConfig(spacing_mm=SPACING_MM),
        ),
    )


def _assert_no_identifiers(metrics: dict[str, int | float], identifiers: list[str]) -> None:
    assert identifiers
    for key, value in metrics.items():
        assert isinstance(value, int | float), key
        for ident in identifiers:
            assert ident not in key
            assert ident not in str(value)


def test_teacher_round_returns_backbone_and_its_head_with_counts(tmp_path: Path) -> None:
    site = _site(tmp_path, "a", [["landmarks"], ["landmarks", "calcification"], ["calcification"]])
    spec = _teacher_spec()
    state = task.initial_state(spec)
    update = task.train_local(site, spec, state, server_round=1)
    model = build_model(spec.model)
    params = {n for n, _ in model.named_parameters()}
    assert set(update.arrays) == params  # a teacher is backbone + its head: all of it was trained
    assert all(update.arrays[n].shape == p.shape for n, p in model.named_parameters())
    assert not any(torch.equal(update.arrays[n], state[n]) for n in update.arrays if group_of(n) == "landmarks")
    metrics = update.metrics()
    assert metrics["num-examples"] == 2  # the calcification-only case cannot train a landmark teacher
    assert metrics["n-landmarks"] == 2
    assert set(metrics) == {"num-examples", "n-landmarks", "train-loss", "train-loss-landmarks", "train-seconds"}
    assert metrics["train-loss"] > 0
    _assert_no_identifiers(metrics, _case_ids(site))


def test_site_without_labels_for_the_task_returns_nothing_but_the_same_keys(tmp_path: Path) -> None:
    site = _site(tmp_path, "b", [["calcification"], []])
    spec = _teacher_spec("landmarks")
    update = task.train_local(site, spec, task.initial_state(spec), server_round=1)
    assert update.arrays == {}
    labelled = task.train_local(_site(tmp_path, "c", [["landmarks"]]), spec, task.initial_state(spec), 1)
    assert set(update.metrics()) == set(labelled.metrics())  # Flower needs identical keys from every site
    assert update.metrics()["n-landmarks"] == 0
    assert update.metrics()["num-examples"] == 0


def test_finetune_returns_only_heads_the_site_holds_labels_for(tmp_path: Path) -> None:
    site = _site(tmp_path, "d", [["landmarks"], ["landmarks"]])
    student = ModelConfig.student(
        feature_size=12,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        heads={"landmarks": 6, "septum": 3, "calcification": 2},
    )
    spec = task.StageSpec(
        stage="finetune",
        model=student,
        train=_teacher_spec().train.model_copy(
            update={"tasks": ("landmarks", "septum", "calcification"), "patch_size": (64, 64, 64), "steps": 1}
        ),
        freeze="backbone",
    )
    update = task.train_local(site, spec, task.initial_state(spec), server_round=2)
    groups = {group_of(n) for n in update.arrays}
    assert groups == {"landmarks"}  # frozen backbone and unlabelled heads stay home
    model = build_model(student)
    head = {n for n, _ in model.named_parameters() if group_of(n) == "landmarks"}
    assert set(update.arrays) == head
    metrics = update.metrics()
    assert (metrics["n-landmarks"], metrics["n-septum"], metrics["n-calcification"]) == (2, 0, 0)
    assert metrics["train-loss-septum"] == 0.0
    assert BACKBONE not in groups


def test_evaluation_reports_aggregate_numbers_only(tmp_path: Path) -> None:
    site = _site(tmp_path, "e", [["landmarks"], ["landmarks", "calcification"]])
    spec = _teacher_spec()
    spec = task.StageSpec(spec.stage, spec.model, spec.train, eval_split="all")
    metrics = task.evaluate_local(site, spec, task.initial_state(spec))
    assert metrics["num-examples"] == 2
    assert metrics["n-landmarks"] == 2 * len(TASK_LANDMARKS["landmarks"])
    assert 0.0 <= metrics["failure-rate-landmarks"] <= 1.0
    assert set(metrics) == {"num-examples", "n-landmarks", "mean-mm-landmarks", "failure-rate-landmarks"}
    _assert_no_identifiers(metrics, _case_ids(site))


def test_received_model_is_saved_and_pseudolabels_come_from_it(tmp_path: Path) -> None:
    site = _site(tmp_path, "f", [["landmarks"], []])
    spec = _teacher_spec()
    with pytest.raises(MissingResourceError, match="teacher"):
        task.pseudolabel_site(site)
    state = task.initial_state(spec)
    path = task.save_global_model(site, spec, state)
    assert path == site.work_dir / "models" / "teacher-landmarks.pt"
    assert task.received_teachers(site) == {"landmarks": path}
    written = task.pseudolabel_site(site)
    assert written == {"landmarks": 2}
    record = json.loads((site.work_dir / "pseudo-labels" / "teachers.json").read_text())
    assert record["landmarks"]["spacing_mm"] == SPACING_MM
    distill = task.StageSpec(
        "distill", spec.model, spec.train.model_copy(update={"preprocessing": PreprocessingConfig()})
    )
    with pytest.raises(ConfigError, match="grid"):
        task.train_local(site, distill, state, 1)


def _site_pseudolabel(*args: str) -> subprocess.CompletedProcess[str]:
    cardiofm = str(Path(sys.executable).parent / "cardiofm")
    return subprocess.run(
        [cardiofm, "site", "pseudolabel", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_site_pseudolabel_command_writes_what_distill_reads(tmp_path: Path) -> None:
    site = _site(tmp_path, "p", [["landmarks"], []])
    spec = _teacher_spec()
    common = ["--data", str(site.dataset), "--work-dir", str(site.work_dir)]
    refused = _site_pseudolabel(*common)  # before the teacher stage: nothing to pseudo-label with
    assert refused.returncode == MissingResourceError.exit_code
    assert "no teacher model" in refused.stderr
    assert not (site.work_dir / "pseudo-labels").exists()
    teachers = tmp_path / "teachers"  # a teacher handed over as a file, not received in this work dir
    received = task.save_global_model(site, spec, task.initial_state(spec))
    shutil.move(received.parent, teachers)
    wrong = _site_pseudolabel(*common, "--teachers", str(teachers), "--task", "septum")
    assert wrong.returncode == MissingResourceError.exit_code
    assert "['septum']" in wrong.stderr
    assert "found: ['landmarks']" in wrong.stderr
    run = _site_pseudolabel(*common, "--teachers", str(teachers), "--task", "landmarks")
    assert run.returncode == 0, run.stderr
    record = json.loads((site.work_dir / "pseudo-labels" / "teachers.json").read_text())
    assert record["landmarks"] == {"teacher": "teacher-landmarks.pt", "spacing_mm": SPACING_MM, "cases": 2}
    distill = task.StageSpec("distill", spec.model, spec.train)
    # the distill stage of this work dir accepts them (same grid): it trains on both cases
    assert task.train_local(site, distill, task.initial_state(spec), 1).num_examples == 2


def test_distill_without_pseudolabels_says_what_to_do(tmp_path: Path) -> None:
    site = _site(tmp_path, "g", [["landmarks"]])
    spec = _teacher_spec()
    distill = task.StageSpec("distill", spec.model, spec.train)
    with pytest.raises(MissingResourceError, match="pseudo-label step"):
        task.train_local(site, distill, task.initial_state(spec), 1)


def test_stage_spec_round_trips_through_a_config_record() -> None:
    spec = _teacher_spec()
    record = ConfigRecord({**spec.to_config()})
    again = task.StageSpec.from_config(dict(record))
    assert again == spec
    with pytest.raises(ConfigError, match="lacks 'model-config'"):
        task.StageSpec.from_config({"stage": "distill"})


def _run(**overrides: object) -> FederatedRunConfig:
    values: dict[str, object] = {"stage": "teacher:landmarks", "out-dir": "/srv/cardiofm/runs", **overrides}
    return FederatedRunConfig.from_run_config(values)


def test_run_config_parses_kebab_case_and_lists() -> None:
    run = _run(**{"teacher-filters": "4,8,16,32", "num-rounds": 2, "tasks": "landmarks,septum"})
    assert run.teacher_filters == (4, 8, 16, 32)
    assert run.tasks == ("landmarks", "septum")
    assert run.stage_tasks == ("landmarks",)
    assert FederatedRunConfig.from_run_config(run.to_run_config()) == run
    spec = task.stage_spec(run.model_copy(update={"patch_size_vox": 16}))
    assert spec.model.name == "resunet-teacher"
    assert spec.model.filters == (4, 8, 16, 32)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stage": "teacher:landmark"}, "did you mean 'teacher:landmarks'"),
        ({"stage": "distil"}, "did you mean 'distill'"),
        ({"num-round": 3}, "did you mean 'num-rounds'"),
        ({"strategy": "fedprox"}, "proximal-mu > 0"),
        ({"stage": "finetune"}, "needs init-checkpoint"),
        ({"out-dir": "runs"}, "out-dir must be an absolute"),
        ({"teacher-filters": "4,x"}, "teacher-filters"),
        ({"local-steps": 0}, "local-steps"),
    ],
)
def test_run_config_errors_name_the_key(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _run(**overrides)


def test_node_config_needs_dataset_and_work_dir() -> None:
    with pytest.raises(ConfigError, match="work-dir"):
        SiteNodeConfig.from_node_config({"dataset": "/data/site"})
    site = SiteNodeConfig.from_node_config({"dataset": "/data/site", "work-dir": "/srv/site-work", "site-name": "A"})
    assert site.work_dir == Path("/srv/site-work")


def test_student_patch_and_version_checks() -> None:
    with pytest.raises(ConfigError, match="at least 64"):
        task.stage_spec(_run(stage="distill", **{"patch-size-vox": 32}))
    with pytest.raises(ConfigError, match=r"built for cardiofm 0\.0\.0"):
        check_version(_run(**{"cardiofm-version": "0.0.0"}))


def test_app_bundle_config_lists_every_run_key_and_points_at_the_installed_package() -> None:
    defaults = default_run_config()
    assert set(defaults) == {name.replace("_", "-") for name in FederatedRunConfig.model_fields}
    text = app_pyproject()
    assert 'serverapp = "cardiofm.federated.server_app:app"' in text
    assert 'clientapp = "cardiofm.federated.client_app:app"' in text
    run = FederatedRunConfig.from_run_config({**defaults, "stage": "distill", "out-dir": "/srv/runs"})
    check_version(run)


def test_client_errors_leave_the_site_without_case_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = _site(tmp_path, "h", [["landmarks"]])
    case_id = _case_ids(site)[0]

    def broken(*_args: object, **_kwargs: object) -> None:
        raise InputDataError(f"case {case_id} (study {STUDY_UID}.0) in {site.dataset} has no usable image")

    monkeypatch.setattr(task, "train_local", broken)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    spec = _teacher_spec()
    config = ConfigRecord({**spec.to_config(), "server-round": 1})
    content = RecordDict({"config": config, "arrays": ArrayRecord(task.initial_state(spec))})
    msg = Message(content=content, dst_node_id=1, message_type="train")
    node_config: dict[str, bool | float | int | str] = {"dataset": str(site.dataset), "work-dir": str(site.work_dir)}
    run_config = _run().to_run_config()
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=run_config)
    with pytest.raises(CardioFMError) as info:
        client_app.train(msg, context)
    text = str(info.value)
    assert "InputDataError" in text
    assert "no usable image" in text
    assert case_id not in text
    assert STUDY_UID not in text
    assert str(site.dataset) not in text


def _wire(message: Message) -> Message:
    """Deflate and inflate a message as the SuperLink does between ServerApp and ClientApp."""
    contents = {object_id: obj.deflate() for object_id, obj in get_all_nested_objects(message).items()}
    inflated = inflate_object_from_contents(message.object_id, contents)
    assert isinstance(inflated, Message)
    return inflated


class InProcessGrid(FlowerGrid):
    """Delivers each message to the ClientApp handlers of in-process sites (node ids 1..n)."""

    def __init__(self, sites: dict[int, SiteNodeConfig], run_config: dict[str, Any]) -> None:
        self.sites = sites
        self.run_config = run_config
        self.replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.sites)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        handlers = {"train": client_app.train, "evaluate": client_app.evaluate, "query": client_app.query}
        ids = []
        for message in messages:
            instruction = _wire(message)
            node = instruction.metadata.dst_node_id
            site = self.sites[node]
            node_config: dict[str, bool | float | int | str] = {
                "dataset": str(site.dataset),
                "work-dir": str(site.work_dir),
            }
            context = Context(7, node, node_config, RecordDict(), self.run_config)
            reply = handlers[instruction.metadata.message_type](instruction, context)
            ids.append(f"m{len(self.replies)}")
            self.replies[ids[-1]] = _wire(reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise NotImplementedError  # the ServerApp streams replies through push_messages / pull_messages


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 7)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


@pytest.mark.usefixtures("server_identity")
def test_server_app_trains_checkpoints_delivers_and_evaluates(tmp_path: Path) -> None:
    sites = {1: _site(tmp_path, "s1", [["landmarks"], ["calcification"]]), 2: _site(tmp_path, "s2", [[], []])}
    out = tmp_path / "coordinator"
    teacher = {
        "stage": "teacher:landmarks",
        "out-dir": str(out),
        "num-rounds": 2,
        "local-steps": 1,
        "batch-size": 1,
        "patch-size-vox": 16,
        "spacing-mm": SPACING_MM,
        "teacher-filters": "4,8,16,32",
        "evaluate-each-round": True,
        "eval-split": "all",
    }
    run = FederatedRunConfig.from_run_config(teacher)
    summary_path = server_app.run_stage(InProcessGrid(sites, run.to_run_config()), run, run_id=7)
    summary = json.loads(summary_path.read_text())
    assert summary_path.parent == out / "run-7-teacher-landmarks"
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    per_site = summary["rounds"][0]["train"]["metrics"]
    assert (per_site["1"]["n-landmarks"], per_site["2"]["n-landmarks"]) == (1, 0)  # site 2 holds no labels
    assert all(len(r["evaluate"]["answered"]) == 2 for r in summary["rounds"])
    assert set(summary["evaluate_metrics"]) == {"1", "2"}
    assert summary["final"] == {"checkpoint": "global.pt", "sites": 2, "sites_saved_model": 2, "sites_shut_down": 2}
    final = load_checkpoint(summary_path.parent / "global.pt")
    for site in sites.values():  # the final model reaches every site, also the one without labels
        received = load_checkpoint(site.work_dir / "models" / "teacher-landmarks.pt")
        assert all(torch.equal(received.state_dict[k], v) for k, v in final.state_dict.items())
        assert json.loads((site.work_dir / "run-finished").read_text())["run_id"] == 7
    assert (summary_path.parent / "round-002.pt").is_file()

    evaluate = {**teacher, "stage": "evaluate", "init-checkpoint": str(summary_path.parent / "global.pt")}
    run = FederatedRunConfig.from_run_config(evaluate)
    summary = json.loads(server_app.run_stage(InProcessGrid(sites, run.to_run_config()), run, run_id=8).read_text())
    assert summary["evaluation"]["num-examples"] == 4
    assert summary["evaluation"]["n-landmarks"] == len(TASK_LANDMARKS["landmarks"])  # the one labelled case
    assert 0.0 <= summary["evaluation"]["failure-rate-landmarks"] <= 1.0
    assert len(summary["rounds"][0]["evaluate"]["answered"]) == 2


class FailingGrid(InProcessGrid):
    """An in-process grid whose coordinator 'dies' when round ``kill_round`` starts, and whose ``silent``
    sites never answer a training message (a site killed mid-round)."""

    def __init__(
        self,
        sites: dict[int, SiteNodeConfig],
        run_config: dict[str, Any],
        kill_round: int = 0,
        silent: frozenset[int] = frozenset(),
    ) -> None:
        super().__init__(sites, run_config)
        self.kill_round = kill_round
        self.silent = silent

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        outgoing = list(messages)
        for message in outgoing:
            if message.metadata.message_type == "train":
                config = message.content.config_records["config"]
                if config.get("server-round") == self.kill_round:
                    raise KeyboardInterrupt("coordinator killed")
        kept = [m for m in outgoing if m.metadata.message_type != "train" or m.metadata.dst_node_id not in self.silent]
        ids = list(super().push_messages(kept))
        return ids + [f"lost-{n}" for n in range(len(outgoing) - len(kept))]


def _teacher_run(out: Path, **overrides: object) -> FederatedRunConfig:
    values: dict[str, object] = {
        "stage": "teacher:landmarks",
        "out-dir": str(out),
        "num-rounds": 3,
        "local-steps": 1,
        "batch-size": 1,
        "patch-size-vox": 16,
        "spacing-mm": SPACING_MM,
        "teacher-filters": "4,8,16,32",
        "round-timeout-s": 30.0,
        **overrides,
    }
    return FederatedRunConfig.from_run_config(values)


@pytest.mark.usefixtures("server_identity")
def test_a_killed_coordinator_resumes_after_the_last_completed_round_with_its_adam_moments(tmp_path: Path) -> None:
    sites = {1: _site(tmp_path, "r1", [["landmarks"]]), 2: _site(tmp_path, "r2", [["landmarks"]])}
    out = tmp_path / "coordinator"
    run = _teacher_run(out, strategy="fedadam")
    with pytest.raises(KeyboardInterrupt):  # killed when round 2 starts: round 1 is the last completed
        server_app.run_stage(FailingGrid(sites, run.to_run_config(), kill_round=2), run, run_id=7)
    first = out / "run-7-teacher-landmarks"
    assert server_app.completed_rounds(first) == [0, 1]
    (first / "summary.json").unlink()  # as after SIGKILL: no summary at all
    bad = _teacher_run(out, stage="teacher:septum", resume=True)
    with pytest.raises(ConfigError, match="no unfinished"):  # nothing of this stage to resume
        server_app.run_stage(InProcessGrid(sites, bad.to_run_config()), bad, run_id=8)

    fresh = _teacher_run(out, strategy="fedadam", resume=True)
    path = server_app.run_stage(InProcessGrid(sites, fresh.to_run_config()), fresh, run_id=9)
    summary = json.loads(path.read_text())
    assert summary["status"] == "completed"
    assert summary["resumed"] == {"from_run": first.name, "from_round": 1, "server_optimizer": "restored"}
    assert [r["round"] for r in summary["rounds"]] == [2, 3]  # only the remaining rounds, numbered on
    assert summary["resumed"]["from_round"] + len(summary["rounds"]) == fresh.num_rounds
    assert set(summary["train_metrics"]) == {"2", "3"}
    assert server_app.completed_rounds(path.parent) == [1, 2, 3]  # its starting point, then its own rounds
    assert json.loads((first / "superseded.json").read_text()) == {"resumed_by": path.parent.name, "after_round": 1}
    round_1 = load_checkpoint(first / "round-001.pt").state_dict
    final = load_checkpoint(path.parent / "global.pt").state_dict
    assert not all(torch.equal(round_1[k], final[k]) for k in final)
    name = next(n for n in final if n.endswith("weight") and group_of(n) == "landmarks")
    adam = pickle.loads((path.parent / "round-003.server.pkl").read_bytes())
    assert adam.steps(name) == 3  # one step before the kill, two after: the moments were carried over
    # neither the completed run nor the one it took over is resumed again
    with pytest.raises(ConfigError, match="no unfinished"):
        server_app.run_stage(InProcessGrid(sites, fresh.to_run_config()), fresh, run_id=10)


@pytest.mark.usefixtures("server_identity")
def test_a_site_lost_mid_round_is_left_out_when_enough_others_answer(tmp_path: Path) -> None:
    sites = {n: _site(tmp_path, f"d{n}", [["landmarks"]]) for n in (1, 2, 3)}
    run = _teacher_run(tmp_path / "coordinator", **{"num-rounds": 1, "min-nodes": 2, "round-timeout-s": 3.0})
    grid = FailingGrid(sites, run.to_run_config(), silent=frozenset({3}))
    summary = json.loads(server_app.run_stage(grid, run, run_id=7).read_text())
    assert summary["status"] == "completed"
    (entry,) = summary["rounds"]
    assert entry["participants"] == 2
    assert entry["train"]["timed_out"] == 1
    assert entry["groups"]["landmarks"] == {"sites": 2, "examples": 2}


@pytest.mark.usefixtures("server_identity")
def test_a_round_answered_by_fewer_than_min_nodes_fails_the_run_clearly(tmp_path: Path) -> None:
    sites = {n: _site(tmp_path, f"f{n}", [["landmarks"]]) for n in (1, 2, 3)}
    out = tmp_path / "coordinator"
    run = _teacher_run(out, **{"num-rounds": 2, "min-nodes": 2, "round-timeout-s": 2.0})
    grid = FailingGrid(sites, run.to_run_config(), silent=frozenset({2, 3}))
    started = time.monotonic()
    with pytest.raises(FederationTimeoutError, match=r"only 1 of at least 2 site\(s\) answered"):
        server_app.run_stage(grid, run, run_id=7)
    assert time.monotonic() - started < 60  # no hang
    folder = out / "run-7-teacher-landmarks"
    assert server_app.completed_rounds(folder) == [0]  # nothing was aggregated from the short round
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "FederationTimeoutError" in summary["error"]


def test_too_few_connected_sites_time_out_naming_how_many_connected(tmp_path: Path) -> None:
    grid = InProcessGrid({1: _site(tmp_path, "w", [["landmarks"]])}, {})
    with pytest.raises(FederationTimeoutError, match=r"only 1 of at least 2 site\(s\) connected"):
        server_app._wait_for_nodes(grid, 2, 0.5)
    now = [0.0]
    recorder = server_app.RecordingGrid(grid, min_nodes=2, node_wait_s=10.0, clock=lambda: now[0])
    assert list(recorder.get_node_ids()) == [1]  # Flower's own wait keeps asking ...
    now[0] = 11.0
    with pytest.raises(FederationTimeoutError, match=r"only 1 of at least 2"):  # ... until the timeout
        recorder.get_node_ids()


def test_finetune_adds_a_downstream_head_the_initial_model_lacks(tmp_path: Path) -> None:
    student = ModelConfig.student(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), heads={"landmarks": 6})
    train_cfg = _teacher_spec().train.model_copy(update={"patch_size": (64, 64, 64)})
    torch.manual_seed(3)
    ckpt_path = save_checkpoint(tmp_path / "distill.pt", build_model(student), student, train_cfg, [])
    init = load_checkpoint(ckpt_path)
    run = _run(stage="finetune", tasks="landmarks,coronaries", **{"init-checkpoint": str(ckpt_path)})
    spec = task.stage_spec(run, init)
    assert spec.freeze == "backbone"
    assert set(spec.model.heads) == {"landmarks", "coronaries"}
    state = task.initial_state(spec, init)
    assert all(torch.equal(state[k], v) for k, v in init.state_dict.items())  # all else from the checkpoint
    assert {group_of(k) for k in set(state) - set(init.state_dict)} == {"coronaries"}
    with pytest.raises(ConfigError, match="only for finetune and evaluate"):
        _run(stage="distill", tasks="landmarks,coronaries")
