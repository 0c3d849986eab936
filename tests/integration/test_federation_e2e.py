"""A real loopback federation over the whole chain: teacher → pseudo-label → distill → finetune → evaluate.

Three phantom hospitals (the last a held-out site without any labels) are prepared at small size; tiny models
keep every round at a few seconds of compute. The chain: ``teacher:landmarks`` (2 rounds), the local pseudo-label
step at every site, ``distill`` (2 rounds; every site takes part through its pseudo-labels), ``finetune`` (2
rounds, backbone frozen, plus a downstream ``coronaries`` head the distilled model lacks), then ``evaluate``.

``flwr run`` exits 0 even when a run fails, so the outcome is read from ``flwr ls --run-id`` (the run's status),
the coordinator's checkpoints and summary, and the files each site keeps (final models, done marker). Which site
holds which labels is read from the phantom federation's record and the prepared datasets, never hard-coded.
``--insecure`` is used here on purpose: TLS and node authentication have their own tests. The helpers here are
shared with ``test_federation_resilience.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from cardiofm.contracts.dataset import DatasetManifest
from cardiofm.contracts.federated_run import SiteNodeConfig
from cardiofm.federated.fab import build_fab, write_app_dir
from cardiofm.federated.flwr_cli import format_config
from cardiofm.federated.progress import read_progress
from cardiofm.federated.site_worker import start_worker, stop_worker
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.pipeline.dag_runner import LocalAirflow, run_dag
from cardiofm.pipeline.prepare import prepare_site
from cardiofm.training.checkpoint import load_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
CARDIOFM = str(BIN / "cardiofm")
AIRFLOW_PYTHON = Path(__file__).resolve().parents[2] / ".venvs" / "airflow" / "bin" / "python"
CONNECTION = "e2e"
RUN_TIMEOUT_S = 300.0
#: Each ``flwr ls`` starts a Python process; polling more often only takes CPU from the federation.
POLL_S = 4.0
SPACING_MM = 3.0
CASES_PER_SITE = 2
COMMON: dict[str, Any] = {
    "num-rounds": 2,
    "min-nodes": 2,
    "round-timeout-s": 180.0,
    "local-steps": 2,
    "batch-size": 1,
    "spacing-mm": SPACING_MM,
    "teacher-filters": "4,8,16,32",
    "student-feature-size": 12,
    "student-depths": "1,1,1,1",
    "student-num-heads": "1,1,1,1",
    "tasks": "landmarks",
    "eval-split": "all",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    """Stop a process started here and everything it spawned (its own session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):  # children left in the session (e.g. a ClientApp)
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class Federation:
    """A SuperLink and one SuperNode per site on loopback, all started (and stopped) by the test."""

    root: Path
    env: dict[str, str]
    app_dir: Path
    sites: list[SiteNodeConfig]
    out_dir: Path
    port: int
    database: Path | None = None
    superlink: subprocess.Popen[bytes] | None = None
    supernodes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    #: Each SuperNode gets the site worker ``site join`` starts (torch loaded once, not per message).
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_superlink(self) -> None:
        cmd = [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--disable-runtime-dependency-installation"]
        if self.database is not None:
            cmd += ["--database", str(self.database)]
        log = self.root / "superlink.log"
        self.logs.append(log)
        self.superlink = spawn(cmd, self.env, log)
        wait_healthy(self.port, self.superlink)

    def start_supernodes(self) -> None:
        for n, node in enumerate(self.sites):
            worker, extra = start_worker(node, env=self.env)
            self.workers.append(worker)
            self.logs.append(node.work_dir / "worker" / "worker.log")
            node_config = format_config({"dataset": str(node.dataset), "work-dir": str(node.work_dir), **extra})
            log = self.root / f"supernode-{n}.log"
            self.logs.append(log)
            cmd = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{self.port}"]
            cmd += ["--port", str(free_port()), "--node-config", node_config]
            self.supernodes.append(spawn(cmd, self.env, log))

    def stop_all(self) -> None:
        for proc in [*reversed(self.supernodes), *([self.superlink] if self.superlink else [])]:
            stop(proc)
        for worker in self.workers:
            stop_worker(worker)

    def flwr(self, *args: str) -> dict[str, Any]:
        proc = subprocess.run(
            [str(BIN / "flwr"), *args, "--format", "json"],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        try:
            return dict(json.loads(proc.stdout))
        except json.JSONDecodeError:
            pytest.fail(
                f"flwr {args[0]} printed no JSON (rc {proc.returncode}): {proc.stdout[-800:]}{proc.stderr[-800:]}"
            )

    def start(self, run_config: dict[str, Any]) -> int:
        """Start a run detached; return its id."""
        config = format_config(run_config)
        started = self.flwr("run", str(self.app_dir), CONNECTION, "--run-config", config)
        assert started.get("success", True), started
        return int(started["run-id"])

    def wait(self, run_id: int, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
        """Poll ``flwr ls`` until the run finishes; return its final record."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            runs = self.flwr("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
            if runs and str(runs[0].get("status", "")).startswith("finished"):
                return dict(runs[0])
            time.sleep(POLL_S)
        self.flwr("stop", str(run_id), CONNECTION)
        pytest.fail(f"run {run_id} did not finish within {timeout_s:.0f} s\n{self.log_tails()}")

    def run(self, run_config: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Start a run and wait for it; return its id and final record."""
        run_id = self.start(run_config)
        return run_id, self.wait(run_id)

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs if p.is_file())

    def summary(self, run_id: int, stage: str) -> tuple[Path, dict[str, Any]]:
        folder = self.out_dir / f"run-{run_id}-{stage}"
        return folder, json.loads((folder / "summary.json").read_text())


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the SuperLink exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail("the SuperLink did not become healthy")


def make_federation(root: Path, sites: int, *, database: bool = False) -> Federation:
    """Phantom sites (the last one held out: no labels), prepared datasets, env and app dir; nothing started.

    Every case of a training site is labelled with its site's tasks (label fraction 1), so the holders of a
    task are exactly the sites whose record lists it; the tests read them from the record and the datasets.
    """
    settings = FederationSettings(
        sites=sites, cases_per_site=CASES_PER_SITE, seed=4, series_per_study=1, label_fraction=(1.0, 1.0)
    )
    record = generate_federation(root / "phantoms", settings)
    nodes: list[SiteNodeConfig] = []
    for site in record.sites:
        dataset = root / "sites" / site.site_id / "dataset"
        prepared = prepare_site(root / "phantoms" / site.folder, dataset, test_fraction=0.0).prepared
        assert prepared == CASES_PER_SITE
        nodes.append(SiteNodeConfig(dataset=dataset, work_dir=root / "sites" / site.site_id / "work"))
    flwr_home = root / "flwr-home"
    flwr_home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_HOME=str(flwr_home),
        PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]),
        OMP_NUM_THREADS="1",
    )
    port = free_port()
    connection = f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
    (flwr_home / "config.toml").write_text(connection + f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    return Federation(
        root=root,
        env=env,
        app_dir=write_app_dir(root / "app"),
        sites=nodes,
        out_dir=root / "coordinator",
        port=port,
        database=root / "superlink.db" if database else None,
    )


def holders(fed: Federation, task: str) -> int:
    """Sites whose prepared dataset holds ``task`` labels on at least one training case."""
    count = 0
    for site in fed.sites:
        manifest = DatasetManifest.model_validate_json((site.dataset / "manifest.json").read_text())
        count += any(task in case.tasks and case.split == "train" for case in manifest.cases)
    return count


@contextlib.contextmanager
def started(fed: Federation) -> Iterator[Federation]:
    """``fed`` with its SuperLink and SuperNodes running; all of it stopped afterwards."""
    try:
        fed.start_superlink()
        fed.start_supernodes()
        yield fed
    finally:
        fed.stop_all()


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with started(make_federation(tmp_path_factory.mktemp("federation"), sites=3)) as fed:
        yield fed


def _check_stage(fed: Federation, run_id: int, info: dict[str, Any], stage: str) -> dict[str, Any]:
    """Completed, 2 rounds, every site answered and got the final model; returns the summary."""
    assert info["status"] == "finished:completed", f"{info}\n{fed.log_tails()}"
    folder, summary = fed.summary(run_id, stage)
    assert summary["status"] == "completed"
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    n = len(fed.sites)
    for entry in summary["rounds"]:
        assert entry["participants"] == n, entry
        assert entry["train"]["errors"] == 0
        assert entry["seconds"] > 0
    assert summary["final"] == {"checkpoint": "global.pt", "sites": n, "sites_saved_model": n, "sites_shut_down": n}
    progress = read_progress(folder)  # one line per round, written as each round ended
    assert [(p["stage"], p["round"], p["rounds"], p["sites_answered"]) for p in progress] == [
        (stage.replace("-", ":", 1) if stage.startswith("teacher") else stage, r, 2, n) for r in (1, 2)
    ]
    for entry in progress:
        assert entry["loss"] == pytest.approx(float(summary["train_metrics"][str(entry["round"])]["train-loss"]))
        assert entry["seconds"] > 0
    for name in ("round-000.pt", "round-001.pt", "round-002.pt", "global.pt"):
        assert (folder / name).is_file(), name
    final = load_checkpoint(folder / "global.pt").state_dict
    last_round = load_checkpoint(folder / "round-002.pt").state_dict
    assert all(torch.equal(last_round[k], final[k]) for k in final)
    for site in fed.sites:
        received = load_checkpoint(site.work_dir / "models" / f"{stage}.pt").state_dict
        assert received.keys() == final.keys()
        assert all(torch.equal(received[k], final[k]) for k in final), "a site holds another model than the coordinator"
        marker = site.work_dir / "run-finished"
        assert json.loads(marker.read_text())["run_id"] == run_id
        marker.unlink()
    return summary


def _sites_per_group(summary: dict[str, Any]) -> list[dict[str, int]]:
    return [{g: v["sites"] for g, v in entry["groups"].items()} for entry in summary["rounds"]]


def _losses(summary: dict[str, Any]) -> list[float]:
    return [float(summary["train_metrics"][str(r)]["train-loss"]) for r in (1, 2)]


def test_teacher_pseudolabel_distill_finetune_evaluate_over_loopback(federation: Federation, tmp_path: Path) -> None:
    fed = federation
    record = json.loads((fed.root / "phantoms" / "federation.json").read_text())
    without = [s["site_id"] for s in record["sites"] if "landmarks" not in s["tasks"]]
    assert without, "the federation must include a site without landmark labels"
    landmark_holders = holders(fed, "landmarks")
    coronary_holders = holders(fed, "coronaries")
    assert 0 < landmark_holders < len(fed.sites)
    assert 0 < coronary_holders < len(fed.sites)
    out = str(fed.out_dir)
    started = time.monotonic()
    phases: dict[str, float] = {}

    def phase(name: str) -> None:
        phases[name] = time.monotonic() - started - sum(phases.values())

    teacher_id, info = fed.run({"stage": "teacher:landmarks", "patch-size-vox": 32, "out-dir": out, **COMMON})
    teacher = _check_stage(fed, teacher_id, info, "teacher-landmarks")
    # the teacher (backbone and head) is aggregated only from the sites holding landmark labels
    assert _sites_per_group(teacher) == [{"backbone": landmark_holders, "landmarks": landmark_holders}] * 2
    phase("teacher")

    fab = build_fab(tmp_path / "fab", Path(fed.env["FLWR_HOME"]))
    assert info["fab-hash"] == fab.sha256  # the bundle sites pin is the one that ran

    airflow = LocalAirflow(python=AIRFLOW_PYTHON, scratch=tmp_path / "airflow")
    for n, site in enumerate(fed.sites):  # also the sites without labels: they learn from the teacher's pseudo-labels
        single = {"OMP_NUM_THREADS": "1"}  # as the SuperNodes: no thread contention on a shared CPU
        if n == 0:
            # the first site's admin triggers the cardiofm-pseudolabel DAG: Airflow runs the same site step
            form = {"dataset": str(site.dataset), "work_dir": str(site.work_dir)}
            dag = run_dag(airflow, "cardiofm-pseudolabel", form, name=f"site-{n}", env=single, timeout_s=600)
            assert dag.tasks == {"site-pseudolabel": "success"}
        else:
            # the others run the site's own command, on the work dir they joined with
            run = subprocess.run(
                [CARDIOFM, "site", "pseudolabel", "--data", str(site.dataset), "--work-dir", str(site.work_dir)],
                env={**os.environ, **single},
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert run.returncode == 0, run.stderr[-3000:]
        record = json.loads((site.work_dir / "pseudo-labels" / "teachers.json").read_text())
        assert record["landmarks"]["cases"] == CASES_PER_SITE
        assert len(list((site.work_dir / "pseudo-labels" / "landmarks").glob("*.npz"))) == CASES_PER_SITE
    phase("pseudo-labels")

    distill_id, info = fed.run({"stage": "distill", "patch-size-vox": 64, "out-dir": out, **COMMON, "local-steps": 1})
    distill = _check_stage(fed, distill_id, info, "distill")
    assert distill["heads"] == ["landmarks"]
    n = len(fed.sites)
    assert _sites_per_group(distill) == [{"backbone": n, "landmarks": n}] * 2  # every site, via pseudo-labels
    assert distill["train_metrics"]["2"]["n-landmarks"] == n * CASES_PER_SITE
    distill_dir = fed.out_dir / f"run-{distill_id}-distill"
    student = load_checkpoint(distill_dir / "global.pt").state_dict
    assert any(k.startswith("backbone.swinViT.") for k in student)  # a SwinUNETR student, not the teacher
    phase("distill")

    finetune = {
        "stage": "finetune",
        "patch-size-vox": 64,
        "out-dir": out,
        **COMMON,
        "tasks": "landmarks,coronaries",
        "init-checkpoint": str(distill_dir / "global.pt"),
    }
    finetune_id, info = fed.run(finetune)
    tuned = _check_stage(fed, finetune_id, info, "finetune")
    assert tuned["heads"] == ["landmarks", "coronaries"]  # the downstream head was added
    # backbone frozen (no backbone group); each head only from the sites holding its real labels
    assert _sites_per_group(tuned) == [{"landmarks": landmark_holders, "coronaries": coronary_holders}] * 2
    tuned_model = load_checkpoint(fed.out_dir / f"run-{finetune_id}-finetune" / "global.pt").state_dict
    assert all(torch.equal(tuned_model[k], v) for k, v in student.items() if k.startswith("backbone."))
    # the federation's final model as a release a clinic loads: the same weights, its card naming the heads
    from cardiofm.release import load_release

    release = fed.out_dir / f"run-{finetune_id}-finetune" / "release"
    released = load_release(release).state_dict
    assert released.keys() == tuned_model.keys()
    assert all(torch.equal(released[k], v) for k, v in tuned_model.items())
    assert "coronaries" in (release / "docs" / "MODEL_CARD.md").read_text()
    phase("finetune")

    final_ckpt = fed.out_dir / f"run-{finetune_id}-finetune" / "global.pt"
    run = {"stage": "evaluate", "patch-size-vox": 64, "out-dir": out, **COMMON, "init-checkpoint": str(final_ckpt)}
    evaluate_id, info = fed.run(run)
    assert info["status"] == "finished:completed", f"{info}\n{fed.log_tails()}"
    _, evaluation = fed.summary(evaluate_id, "evaluate")
    assert evaluation["status"] == "completed"
    assert len(evaluation["rounds"][0]["evaluate"]["answered"]) == n
    scores = evaluation["evaluation"]
    assert scores["num-examples"] == n * CASES_PER_SITE
    landmark_points = scores["n-landmarks"]
    assert landmark_points > 0
    assert landmark_points % (landmark_holders * CASES_PER_SITE) == 0  # scored where real landmarks exist
    assert 0.0 <= scores["failure-rate-landmarks"] <= 1.0
    (line,) = read_progress(fed.out_dir / f"run-{evaluate_id}-evaluate")  # the evaluate stage's one record
    assert (line["stage"], line["sites_answered"], line["loss"]) == ("evaluate", n, None)
    assert line["failure-rate-landmarks"] == pytest.approx(scores["failure-rate-landmarks"], abs=1e-3)
    for site in fed.sites:
        (site.work_dir / "run-finished").unlink()
    phase("evaluate")
    print("phase seconds:", {k: round(v, 1) for k, v in phases.items()})
    print("train losses (round 1, round 2):", {s["stage"]: _losses(s) for s in (teacher, distill, tuned)})
    print("evaluation:", scores)
    # metrics improve over round 0: each stage's mean training loss, at the sites that trained, fell from round 1
    # (training that starts from the round-0 model) to round 2; local seeds are fixed per round, so this is
    # deterministic on one machine
    for summary in (teacher, distill, tuned):
        first, last = _losses(summary)
        assert last < first, (summary["stage"], first, last)
