"""A real loopback federation: SuperLink + two SuperNodes run teacher:landmarks, local pseudo-labels, then distill.

Two phantom hospitals are prepared at small size; tiny models keep every round at a few seconds of compute.
``flwr run`` exits 0 even when a run fails, so the outcome is read from ``flwr ls --run-id`` (the run's status),
the coordinator's checkpoints and summary, and the files each site keeps (final models, done marker).
``--insecure`` is used here on purpose: TLS and node authentication have their own tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from cardiofm.contracts.federated_run import SiteNodeConfig
from cardiofm.federated.fab import build_fab, write_app_dir
from cardiofm.federated.task import pseudolabel_site
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.pipeline.prepare import prepare_site
from cardiofm.training.checkpoint import load_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
CONNECTION = "e2e"
RUN_TIMEOUT_S = 240.0
#: Each ``flwr ls`` starts a Python process; polling more often only takes CPU from the federation.
POLL_S = 4.0
SPACING_MM = 3.0
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
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


@dataclass
class Federation:
    root: Path
    env: dict[str, str]
    app_dir: Path
    sites: list[SiteNodeConfig]
    out_dir: Path
    logs: list[Path]

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

    def run(self, run_config: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Start a run detached, poll ``flwr ls`` until it finishes; return its id and final record."""
        config = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
        started = self.flwr("run", str(self.app_dir), CONNECTION, "--run-config", config)
        assert started.get("success", True), started
        run_id = int(started["run-id"])
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            runs = self.flwr("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
            if runs and str(runs[0].get("status", "")).startswith("finished"):
                return run_id, dict(runs[0])
            time.sleep(POLL_S)
        self.flwr("stop", str(run_id), CONNECTION)
        pytest.fail(f"run {run_id} did not finish within {RUN_TIMEOUT_S:.0f} s\n{self.log_tails()}")

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs if p.is_file())


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def _wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
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


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("federation")
    record = generate_federation(
        root / "phantoms", FederationSettings(sites=2, cases_per_site=2, seed=4, held_out_sites=0, series_per_study=1)
    )
    sites: list[SiteNodeConfig] = []
    for site in record.sites:
        dataset = root / "sites" / site.site_id / "dataset"
        assert prepare_site(root / "phantoms" / site.folder, dataset, test_fraction=0.0).prepared == 2
        sites.append(SiteNodeConfig(dataset=dataset, work_dir=root / "sites" / site.site_id / "work"))
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
    port = _free_port()
    connection = f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
    (flwr_home / "config.toml").write_text(connection + f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    logs = [root / "superlink.log"]
    superlink = _spawn(
        [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        ],
        env,
        logs[0],
    )
    procs = [superlink]
    try:
        _wait_healthy(port, superlink)
        for n, node in enumerate(sites):
            node_config = f'dataset="{node.dataset}" work-dir="{node.work_dir}"'
            logs.append(root / f"supernode-{n}.log")
            cmd = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}"]
            cmd += ["--port", str(_free_port()), "--node-config", node_config]
            procs.append(_spawn(cmd, env, logs[-1]))
        yield Federation(root, env, write_app_dir(root / "app"), sites, root / "coordinator", logs)
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _summary(fed: Federation, run_id: int, stage: str) -> tuple[Path, dict[str, Any]]:
    folder = fed.out_dir / f"run-{run_id}-{stage}"
    return folder, json.loads((folder / "summary.json").read_text())


def _check_stage(fed: Federation, run_id: int, info: dict[str, Any], stage: str) -> dict[str, torch.Tensor]:
    assert info["status"] == "finished:completed", f"{info}\n{fed.log_tails()}"
    folder, summary = _summary(fed, run_id, stage)
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for entry in summary["rounds"]:
        assert len(entry["train"]["answered"]) == 2, entry
        assert entry["train"]["errors"] == 0
        assert all(m["n-landmarks"] > 0 for m in entry["train"]["metrics"].values())
    assert summary["final"] == {"checkpoint": "global.pt", "sites": 2, "sites_saved_model": 2, "sites_shut_down": 2}
    for name in ("round-001.pt", "round-002.pt", "global.pt"):
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
    return final


def test_teacher_pseudolabel_distill_over_loopback(federation: Federation, tmp_path: Path) -> None:
    fed = federation
    started = time.monotonic()
    phases: dict[str, float] = {}
    teacher_id, info = fed.run(
        {"stage": "teacher:landmarks", "patch-size-vox": 32, "out-dir": str(fed.out_dir), **COMMON}
    )
    teacher = _check_stage(fed, teacher_id, info, "teacher-landmarks")
    first_round = load_checkpoint(fed.out_dir / f"run-{teacher_id}-teacher-landmarks" / "round-001.pt").state_dict
    assert first_round.keys() == teacher.keys()  # every round checkpoint holds the whole model
    phases["teacher"] = time.monotonic() - started

    fab = build_fab(tmp_path / "fab", Path(fed.env["FLWR_HOME"]))
    assert info["fab-hash"] == fab.sha256  # the bundle sites pin is the one that ran

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the SuperNodes (OMP_NUM_THREADS=1): no thread contention on a shared CPU
    try:
        for site in fed.sites:
            assert pseudolabel_site(site) == {"landmarks": 2}
    finally:
        torch.set_num_threads(threads)
    phases["pseudo-labels"] = time.monotonic() - started - sum(phases.values())

    distill = {"stage": "distill", "patch-size-vox": 64, "out-dir": str(fed.out_dir), **COMMON, "local-steps": 1}
    distill_id, info = fed.run(distill)
    student = _check_stage(fed, distill_id, info, "distill")
    assert any(k.startswith("backbone.swinViT.") for k in student)  # a SwinUNETR student, not the teacher
    _, summary = _summary(fed, distill_id, "distill")
    assert summary["heads"] == ["landmarks"]
    assert summary["train_metrics"]["2"]["n-landmarks"] == 4  # both cases of both sites, via pseudo-labels
    phases["distill"] = time.monotonic() - started - sum(phases.values())
    print("phase seconds:", {k: round(v, 1) for k, v in phases.items()})
