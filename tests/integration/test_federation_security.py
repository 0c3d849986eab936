"""Every protection layer of the federation, each shown refusing on loopback with real processes.

One coordinator (SuperLink on 127.0.0.1 with TLS and SuperNode authentication, nginx allowlisting
proxy in front) serves the whole module; sites join through the proxy with the ``cardiofm site join``
CLI, as a hospital task would. A tiny throwaway Flower app, written and built here, proves that a
site runs only the app bundle it pinned. Linux routes all of 127.0.0.0/8 to ``lo``, so a client bound
to 127.0.0.2 is a second source address for the allowlist.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cardiofm.contracts.coordinator import CoordinatorConfig, SiteEntry, SiteJoinParams
from cardiofm.errors import (
    ConfigError,
    ExternalToolError,
    FederationTimeoutError,
    MissingResourceError,
    UntrustedAppError,
)
from cardiofm.federated import pki, superlink
from cardiofm.federated.fab import FLWR_VERSION, flower_app_pyproject
from cardiofm.federated.flwr_cli import FlwrCli, fab_sha256, flower_env, venv_bin
from cardiofm.federated.supernode import (
    DONE_MARKER_NAME,
    node_config_for,
    supernode_command,
    supernode_env,
)

pytestmark = [pytest.mark.integration]

CARDIOFM = str(Path(sys.executable).parent / "cardiofm")
JOIN_TIMEOUT_S = 60
LAUNCHER = "cardiofm.federated.supernode"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_app(folder: Path) -> Path:
    """A minimal Flower app: the ServerApp sends ``shutdown`` to every node; the ClientApp marks the run done."""
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        flower_app_pyproject(
            name="securityprobe",
            version="1.0.0",
            description="throwaway app of the federation security tests",
            dependencies=[f"flwr=={FLWR_VERSION}"],
            publisher="cardiofm-test",
            serverapp="probe_server:app",
            clientapp="probe_client:app",
            config={"stage": "none", "min-nodes": 2, "fail": False},
        )
    )
    (folder / "probe_server.py").write_text(
        textwrap.dedent(
            """\
            import time

            from flwr.app import ConfigRecord, Context, Message, RecordDict
            from flwr.serverapp import Grid, ServerApp

            app = ServerApp()


            @app.main()
            def main(grid: Grid, context: Context) -> None:
                if context.run_config["fail"]:
                    raise RuntimeError("this run was asked to fail")
                need = int(context.run_config["min-nodes"])
                deadline = time.monotonic() + 30
                nodes = list(grid.get_node_ids())
                while len(nodes) < need and time.monotonic() < deadline:
                    time.sleep(0.5)
                    nodes = list(grid.get_node_ids())
                if len(nodes) < need:
                    raise RuntimeError(f"{len(nodes)} of {need} nodes online")
                config = ConfigRecord({"action": "shutdown"})
                msgs = [
                    Message(RecordDict({"config": config}), dst_node_id=n, message_type="query") for n in nodes
                ]
                replies = list(grid.send_and_receive(msgs, timeout=30))
                ok = [r for r in replies if not r.has_error()]
                # every node answers: a site that refuses the bundle answers with an error reply
                if len(replies) < need or not ok:
                    errors = [f"{r.error.code}: {r.error.reason}" for r in replies if r.has_error()]
                    raise RuntimeError(f"{len(replies)} replies, {len(ok)} ok; errors: {errors}")
            """
        )
    )
    (folder / "probe_client.py").write_text(
        textwrap.dedent(
            """\
            from flwr.app import Context, Message, MetricRecord, RecordDict
            from flwr.clientapp import ClientApp

            from cardiofm.federated.supernode import mark_run_finished

            app = ClientApp()


            @app.query()
            def query(msg: Message, context: Context) -> Message:
                if msg.content["config"]["action"] == "shutdown":
                    mark_run_finished(context.node_config, context.run_id)
                return Message(RecordDict({"metrics": MetricRecord({"ok": 1})}), reply_to=msg)
            """
        )
    )
    return folder


@dataclass
class Federation:
    cfg: CoordinatorConfig
    root: Path
    keys: dict[str, Path]
    app: Path
    fab_sha256: str

    @property
    def ca(self) -> Path:
        return pki.PkiPaths(self.cfg.pki_dir).ca_cert

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.cfg.fleet_port}"

    def node_id(self, site: str) -> int:
        entry = self.cfg.site(site)
        assert entry is not None
        assert entry.node_id is not None
        return entry.node_id


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Coordinator with two registered sites (site-a, site-b); a third key (rogue) is never registered."""
    root = tmp_path_factory.mktemp("federation")
    cfg = CoordinatorConfig(
        work_dir=root / "coordinator",
        dns_names=["superlink.example.org"],
        fleet_host="127.0.0.1",
        fleet_port=_free_port(),
        admin_port=_free_port(),
        allow=["127.0.0.1/32"],
    )
    pki.create_server_certificate(pki.create_ca(cfg.pki_dir), cfg.dns_names, [])
    pairs = {name: pki.create_site_keypair(root / "bundles" / name, name) for name in ("site-a", "site-b", "rogue")}
    sites = [SiteEntry(name=name, public_key=pairs[name].public_key) for name in ("site-a", "site-b")]
    cfg.model_copy(update={"sites": sites}).save()
    cfg = CoordinatorConfig.load(cfg.work_dir)
    app = _write_app(root / "security-probe")
    digest = fab_sha256(app, cfg.flwr_home)
    superlink.start(cfg)
    try:
        cfg = CoordinatorConfig.load(cfg.work_dir)  # start() registered the sites and saved their node ids
        yield Federation(cfg, root, {name: pair.private_key for name, pair in pairs.items()}, app, digest)
    finally:
        assert superlink.stop(cfg) == ["proxy", "superlink"]
    assert superlink.status(cfg).superlink_pid is None


def _join(
    fed: Federation,
    work: Path,
    *,
    site: str | None = None,
    ca: Path | None = None,
    pins: tuple[str, ...] = (),
    timeout_s: float = JOIN_TIMEOUT_S,
    extra: tuple[str, ...] = (),
) -> list[str]:
    data = fed.root / "dataset"
    data.mkdir(exist_ok=True)
    cmd = [CARDIOFM, "site", "join", "--superlink", fed.address, "--data", str(data), "--work-dir", str(work)]
    # the default grace (8 s) outlasts the stock grid's 3 s reply poll: a SuperNode that leaves before the
    # ServerApp pulled its last reply has that reply replaced by "Node Unavailable" on the SuperLink
    cmd += ["--runtime-port", str(_free_port()), "--timeout-s", str(timeout_s)]
    for digest in pins or (fed.fab_sha256,):
        cmd += ["--pin-fab", digest]
    if site is not None:
        cmd += ["--key", str(fed.keys[site])]
    if ca is not None:
        cmd += ["--ca", str(ca)]
    return [*cmd, *extra]


def _coordinator_run(fed: Federation, *config: str) -> list[str]:
    cmd = [CARDIOFM, "coordinator", "run", "--dir", str(fed.cfg.work_dir), "--app", str(fed.app)]
    cmd += ["--stage", "none", "--poll-s", "1", "--timeout-s", "60"]
    for item in config:
        cmd += ["--run-config", item]
    return cmd


@dataclass
class Outcome:
    """A finished CLI process and the work dir it was given."""

    returncode: int
    stdout: str
    stderr: str
    work: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def supernode_log(self) -> str:
        path = self.work / "supernode.log"
        return path.read_text(errors="replace") if path.is_file() else ""


class Processes:
    """CLI processes started by a fixture; whatever still runs at teardown gets SIGTERM (the join then
    stops its SuperNode), then SIGKILL."""

    def __init__(self) -> None:
        self.started: dict[str, tuple[subprocess.Popen[str], Path]] = {}

    def start(self, name: str, cmd: list[str], work: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started[name] = (proc, work)
        return proc

    def finish(self, timeout_s: float = JOIN_TIMEOUT_S + 30) -> dict[str, Outcome]:
        deadline = time.monotonic() + timeout_s
        out = {}
        for name, (proc, work) in self.started.items():
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out[name] = Outcome(proc.returncode, stdout, stderr, work)
        return out

    def close(self) -> None:
        for proc, _ in self.started.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def refusals(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """The refused and failing paths, all at once (each takes seconds of process start-up)."""
    root = tmp_path_factory.mktemp("refusals")
    foreign = pki.create_ca(root / "foreign-ca")
    procs = Processes()
    try:
        jobs = {
            "foreign-ca": _join(federation, root / "foreign-ca-work", site="site-a", ca=foreign.ca_cert),
            "plaintext": _join(federation, root / "plaintext", extra=("--insecure-dev",)),
            "no-tls-no-flag": _join(federation, root / "no-tls"),
            "unregistered": _join(federation, root / "unregistered", site="rogue", ca=federation.ca),
            # registered and connected, but no run ever ends: the task gives up with its own code
            "timeout": _join(federation, root / "timeout", site="site-b", ca=federation.ca, timeout_s=8),
            "failing-run": _coordinator_run(federation, "fail=true"),
        }
        for name, cmd in jobs.items():
            procs.start(name, cmd, root / name if name == "failing-run" else Path(cmd[cmd.index("--work-dir") + 1]))
        yield procs.finish()
    finally:
        procs.close()


@pytest.fixture(scope="module")
def two_site_run(federation: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """One run, two sites: site-a pinned the bundle the coordinator ships, site-b pinned another release."""
    root = tmp_path_factory.mktemp("two-site-run")
    procs = Processes()
    try:
        procs.start("site-a", _join(federation, root / "a", site="site-a", ca=federation.ca), root / "a")
        other_release = "0" * 64
        join_b = _join(federation, root / "b", site="site-b", ca=federation.ca, pins=(other_release,))
        procs.start("site-b", join_b, root / "b")
        online = _wait_online(federation, procs, ["site-a", "site-b"])
        envs = {site: _environ(_launcher_pid(root / work)) for site, work in (("site-a", "a"), ("site-b", "b"))}
        run = subprocess.run(_coordinator_run(federation), capture_output=True, text=True, timeout=90, check=False)
        outcomes = procs.finish()
        for site, env in envs.items():
            outcomes[site].env = env
        outcomes["run"] = Outcome(run.returncode, run.stdout, run.stderr, root, {"online": ",".join(online)})
        yield outcomes
    finally:
        procs.close()


def _node_status(fed: Federation) -> dict[int, str]:
    return {int(n["node-id"]): str(n["status"]) for n in FlwrCli(fed.cfg.flwr_home).list_supernodes()}


def _wait_online(fed: Federation, procs: Processes, sites: list[str], timeout_s: float = 40) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, (proc, _) in procs.started.items():
            if proc.poll() is not None:
                pytest.fail(f"join of {name} exited with {proc.returncode}: {proc.communicate()[1][-2000:]}")
        status = _node_status(fed)
        online = [site for site in sites if status.get(fed.node_id(site)) == "online"]
        if online == sites:
            return online
        time.sleep(0.5)
    pytest.fail(f"{sites} not all online within {timeout_s} s")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _launcher_pid(work: Path) -> int:
    pids = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and LAUNCHER in (cmd := _cmdline(int(p.name))) and str(work) in cmd
    ]
    assert len(pids) == 1, pids
    return pids[0]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _stat_ppid(int(p.name)) == pid]


def _stat_ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _assert_flower_env(env: dict[str, str], home: Path) -> None:
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert Path(env["FLWR_HOME"]) == home
    assert env["PATH"].split(os.pathsep)[0] == str(venv_bin())


# -- (a) TLS is mandatory --------------------------------------------------------------------------------
def test_supernode_with_a_foreign_ca_is_refused(refusals: dict[str, Outcome]) -> None:
    got = refusals["foreign-ca"]
    assert got.returncode == ExternalToolError.exit_code, got.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in got.supernode_log


def test_plaintext_supernode_against_tls_is_refused(refusals: dict[str, Outcome]) -> None:
    got = refusals["plaintext"]
    assert got.returncode == ExternalToolError.exit_code, got.stderr
    assert "INSECURE DEVELOPMENT MODE" in got.stderr
    assert "SuperNode ID" not in got.supernode_log


def test_plaintext_needs_the_explicit_dev_flag(
    federation: Federation, refusals: dict[str, Outcome], tmp_path: Path
) -> None:
    # a site without TLS material and without --insecure-dev does not start at all
    got = refusals["no-tls-no-flag"]
    assert got.returncode == ConfigError.exit_code
    assert "--insecure-dev" in got.stderr
    assert not (got.work / "supernode.log").exists()
    # the coordinator: TLS and node auth by default, plain HTTP only with the flag, never a silent fallback
    default = superlink.superlink_command(federation.cfg)
    assert "--insecure" not in default
    assert {"--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--enable-supernode-auth"} <= set(default)
    assert default[default.index("--host") + 1] == "127.0.0.1"
    assert "--insecure" in superlink.superlink_command(federation.cfg, insecure_dev=True)
    bare = federation.cfg.model_copy(update={"work_dir": tmp_path / "no-certs"})
    with pytest.raises(MissingResourceError, match="coordinator init"):
        superlink.start(bare)
    assert superlink.status(bare).superlink_pid is None


# -- (b) SuperNode authentication ----------------------------------------------------------------------
def test_unregistered_site_key_is_refused(federation: Federation, refusals: dict[str, Outcome]) -> None:
    got = refusals["unregistered"]
    assert got.returncode == ExternalToolError.exit_code, got.stderr
    assert "Failed to activate SuperNode" in got.supernode_log
    superlink_log = (federation.cfg.log_dir / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink_log


def test_registered_sites_connect(two_site_run: dict[str, Outcome]) -> None:
    # both registered keys were listed online by `flwr supernode ls` before the run started
    assert two_site_run["run"].env["online"] == "site-a,site-b"


def test_a_run_that_never_ends_times_out_with_its_own_code(refusals: dict[str, Outcome]) -> None:
    got = refusals["timeout"]
    assert "SuperNode ID" in got.supernode_log  # it was connected
    assert got.returncode == FederationTimeoutError.exit_code, got.stderr
    assert "did not finish within 8 s" in got.stderr


def test_a_failed_run_fails_the_coordinator_although_flwr_run_exits_0(refusals: dict[str, Outcome]) -> None:
    got = refusals["failing-run"]
    assert got.returncode == ExternalToolError.exit_code, got.stderr
    assert "finished:failed" in got.stderr
    assert "this run was asked to fail" in got.stderr


# -- (c) source-address allowlist and hidden admin APIs --------------------------------------------------
def test_proxy_allowlist_and_hidden_admin_apis(federation: Federation) -> None:
    cfg, ca = federation.cfg, federation.ca

    def status(path: str, source: str, method: str = "POST", port: int | None = None) -> int:
        return superlink.https_status(
            "127.0.0.1", port or cfg.fleet_port, path, ca, method=method, source_address=source
        )

    assert status("/health", "127.0.0.1", "GET") == 200
    assert status("/v1/fleet/pull-messages", "127.0.0.1") not in (403, 404)  # passes the filter, then Flower
    # a source address outside the allowlist
    assert status("/health", "127.0.0.2", "GET") == 403
    assert status("/v1/fleet/pull-messages", "127.0.0.2") == 403
    # admin and docs paths: refused even from the allowed address
    for path in ("/v1/control/list-runs", "/v1/control/start-run", "/v1/runtime/acquire-task"):
        assert status(path, "127.0.0.1") == 403, path
    for path in ("/docs", "/openapi.json", "/"):
        assert status(path, "127.0.0.1", "GET") == 403, path
    # what the proxy hides is really there behind it: the Control API answers on the admin port...
    assert status("/v1/control/list-runs", "127.0.0.1", port=cfg.admin_port) != 403
    # ...which listens on 127.0.0.1 only
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", cfg.admin_port), timeout=2).close()
    assert "127.0.0.2 - - " in (cfg.work_dir / "proxy" / "logs" / "access.log").read_text()


# -- (d) no phoning home from any process ---------------------------------------------------------------
def test_every_flower_process_has_telemetry_and_update_check_off(
    federation: Federation, two_site_run: dict[str, Outcome], tmp_path: Path
) -> None:
    cfg = federation.cfg
    _assert_flower_env(flower_env(cfg.flwr_home, base={"PATH": "/usr/bin"}), cfg.flwr_home)
    # the running SuperLink and the SuperExec it spawned (nginx wipes its own environ, so it is not readable)
    link = superlink.processes(cfg)[0].pid()
    assert link is not None
    spawned = [link, *_children(link)]
    assert any("flower-superexec" in _cmdline(pid) for pid in spawned)
    for pid in spawned:
        _assert_flower_env(_environ(pid), cfg.flwr_home)
    # both SuperNodes as they ran
    for site in ("site-a", "site-b"):
        _assert_flower_env(two_site_run[site].env, two_site_run[site].work / "flwr-home")
    params = SiteJoinParams(
        superlink=federation.address,
        ca_cert=federation.ca,
        private_key=federation.keys["site-a"],
        dataset=tmp_path,
        work_dir=tmp_path / "site",
        pinned_fab_sha256=[federation.fab_sha256],
    )
    _assert_flower_env(supernode_env(params), tmp_path / "site" / "flwr-home")
    cmd = supernode_command(params)
    assert cmd[:3] == [sys.executable, "-m", LAUNCHER]
    assert cmd[cmd.index("--pin-fab") + 1] == federation.fab_sha256
    assert node_config_for(params)["work-dir"] == str(tmp_path / "site")


# -- a site runs only the app bundle it pinned ----------------------------------------------------------
def test_pinned_app_runs_and_the_task_ends_with_the_run(
    federation: Federation, two_site_run: dict[str, Outcome]
) -> None:
    run, site = two_site_run["run"], two_site_run["site-a"]
    assert run.returncode == 0, run.stderr
    assert f"app bundle sha256 {federation.fab_sha256}" in run.stdout
    assert "finished:completed" in run.stdout
    assert site.returncode == 0, site.stderr
    assert (site.work / DONE_MARKER_NAME).is_file()
    assert f"App bundle {federation.fab_sha256} is pinned" in site.supernode_log


def test_unpinned_app_is_refused_before_any_of_it_runs(
    federation: Federation, two_site_run: dict[str, Outcome]
) -> None:
    site = two_site_run["site-b"]
    assert site.returncode == UntrustedAppError.exit_code, site.stderr
    assert f"REFUSED app bundle sha256={federation.fab_sha256}" in site.supernode_log
    assert not (site.work / DONE_MARKER_NAME).exists()
    # the bundle was never unpacked at the site, and the refusal went back as an error reply
    assert not list((site.work / "flwr-home").rglob("probe_client.py"))
    assert site.supernode_log.index("REFUSED") < site.supernode_log.rindex("Sent successfully")


# -- the same join, as Kaapana's cardiofm-federated-join DAG runs it -------------------------------------
AIRFLOW_PYTHON = Path(__file__).resolve().parents[2] / ".venvs" / "airflow" / "bin" / "python"


def test_join_dag_runs_the_pinned_app_and_fails_with_the_sites_code(federation: Federation, tmp_path: Path) -> None:
    """Airflow runs the join task (local backend) with the site bundle as env secrets, as Kaapana's pods get it.

    site-a pinned the bundle the coordinator ships: its task succeeds when the run ends; site-b pinned another
    release: its task fails, saying exit code 7 (UntrustedAppError), and nothing of the bundle ran there.
    """
    from concurrent.futures import ThreadPoolExecutor

    from cardiofm.pipeline.dag_runner import LocalAirflow, run_dag

    airflow = LocalAirflow(python=AIRFLOW_PYTHON, scratch=tmp_path / "airflow")
    (tmp_path / "dataset").mkdir()

    def join(site: str, pin: str) -> object:
        form = {
            "superlink": federation.address,
            "pinned_fab_sha256": [pin],
            "dataset": str(tmp_path / "dataset"),
            "work_dir": str(tmp_path / site),
            "timeout_s": 90,
            "runtime_port": _free_port(),
        }
        secrets = {
            "CARDIOFM_CA_CERT_PEM": federation.ca.read_text(),
            "CARDIOFM_SITE_KEY_PEM": federation.keys[site].read_text(),
        }
        try:
            return run_dag(airflow, "cardiofm-federated-join", form, name=site, env=secrets, timeout_s=300)
        except ExternalToolError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=2) as pool:
        a = pool.submit(join, "site-a", federation.fab_sha256)
        b = pool.submit(join, "site-b", "0" * 64)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = _node_status(federation)
            if all(status.get(federation.node_id(s)) == "online" for s in ("site-a", "site-b")):
                break
            assert not a.done(), a.result()
            time.sleep(0.5)
        else:
            pytest.fail("the DAGs' SuperNodes did not come online")
        run = subprocess.run(_coordinator_run(federation), capture_output=True, text=True, timeout=90, check=False)
        outcome_a, outcome_b = a.result(timeout=300), b.result(timeout=300)
    assert run.returncode == 0, run.stderr
    assert not isinstance(outcome_a, Exception), getattr(outcome_a, "log_tail", outcome_a)
    assert outcome_a.tasks == {"site-join": "success"}  # type: ignore[attr-defined]
    assert (tmp_path / "site-a" / DONE_MARKER_NAME).is_file()
    assert isinstance(outcome_b, ExternalToolError)
    assert "site-join failed" in str(outcome_b)
    assert "exit code 7: UntrustedAppError" in outcome_b.log_tail
    assert not (tmp_path / "site-b" / DONE_MARKER_NAME).exists()
    # the key given as an env secret was written for the SuperNode only: not into the site's work folder
    key_text = federation.keys["site-a"].read_text().strip()
    assert not [p for p in (tmp_path / "site-a").rglob("*") if p.is_file() and key_text in p.read_text(errors="ignore")]
