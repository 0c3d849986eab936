"""Start, watch and stop the coordinator's SuperLink and its allowlisting proxy as managed processes.

Both run detached in their own session, with pid files in ``<work dir>/run`` and logs in
``<work dir>/logs``, so ``cardiofm coordinator start`` can return and ``stop``/``status`` work from
another shell. The SuperLink binds ``127.0.0.1`` (its Control API is reachable from the coordinator
host only) with TLS, SuperNode key authentication, no runtime dependency installation and a SQLite
state file (runs and registered nodes survive a restart). The proxy (:mod:`cardiofm.federated.proxy`)
is the only public port. Plain HTTP exists only behind the explicit ``insecure_dev`` switch, for
loopback development: no TLS, no node authentication, no proxy.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cardiofm.contracts.coordinator import CoordinatorConfig
from cardiofm.errors import ConfigError, ExternalToolError
from cardiofm.federated import pki, proxy
from cardiofm.federated.flwr_cli import FlwrCli, executable, flower_env, write_connection_config

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
INSECURE_WARNING = (
    "INSECURE DEVELOPMENT MODE: the SuperLink speaks plain HTTP without SuperNode authentication and "
    "without the allowlisting proxy. Never use this with real sites or real data."
)


@dataclass(frozen=True)
class ManagedProcess:
    """A detached process known by its pid file.

    Attributes
    ----------
    name:
        Short name (``superlink``, ``proxy``), used for the pid and log file names.
    pid_file, log_file:
        Where its pid and its output go.
    cmdline_marker:
        A string its command line must contain, so a recycled pid is never mistaken for it.
    """

    name: str
    pid_file: Path
    log_file: Path
    cmdline_marker: str

    def pid(self) -> int | None:
        """The pid if the process is alive (not a zombie) and is still ours, else ``None``."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        state = stat.rpartition(")")[2].split()[0] if ")" in stat else "?"
        if state in ("Z", "X") or self.cmdline_marker not in cmdline:
            return None
        return pid

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's log."""
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def processes(cfg: CoordinatorConfig) -> tuple[ManagedProcess, ManagedProcess]:
    """The SuperLink and proxy process records of a coordinator work dir."""
    return (
        ManagedProcess("superlink", cfg.run_dir / "superlink.pid", cfg.log_dir / "superlink.log", "flower-superlink"),
        ManagedProcess("proxy", cfg.run_dir / "proxy.pid", cfg.log_dir / "proxy.log", "nginx"),
    )


def superlink_command(cfg: CoordinatorConfig, insecure_dev: bool = False) -> list[str]:
    """The ``flower-superlink`` command line for ``cfg``."""
    cmd = [executable("flower-superlink"), "--host", "127.0.0.1", "--port", str(cfg.admin_port)]
    if insecure_dev:
        cmd.append("--insecure")
    else:
        paths = pki.PkiPaths(cfg.pki_dir)
        cmd += [
            "--ssl-ca-certfile",
            str(paths.ca_cert),
            "--ssl-certfile",
            str(paths.server_cert),
            "--ssl-keyfile",
            str(paths.server_key),
            "--enable-supernode-auth",
        ]
    cmd += ["--disable-runtime-dependency-installation", "--database", str(cfg.state_db)]
    return cmd


def proxy_settings(cfg: CoordinatorConfig) -> proxy.ProxySettings:
    """The proxy settings for ``cfg``."""
    paths = pki.PkiPaths(cfg.pki_dir)
    return proxy.ProxySettings(
        prefix=cfg.work_dir / "proxy",
        listen_host=cfg.fleet_host,
        listen_port=cfg.fleet_port,
        upstream_port=cfg.admin_port,
        server_cert=paths.server_cert.resolve(),
        server_key=paths.server_key.resolve(),
        ca_cert=paths.ca_cert.resolve(),
        allow=list(cfg.allow),
        run_as_user=proxy.current_user_if_root(),
    )


def spawn(proc: ManagedProcess, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``cmd`` detached (own session, output to the log file) and write its pid file."""
    proc.log_file.parent.mkdir(parents=True, exist_ok=True)
    proc.pid_file.parent.mkdir(parents=True, exist_ok=True)
    with proc.log_file.open("ab") as out:
        child = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    proc.pid_file.write_text(f"{child.pid}\n")
    return child


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def terminate(proc: ManagedProcess, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop a managed process and its children (its whole session): SIGTERM, then SIGKILL.

    Returns ``True`` if it was running.
    """
    pid = proc.pid()
    if pid is None:
        proc.pid_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if proc.pid() is None:
            break
        time.sleep(0.2)
    else:
        log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", proc.name, pid, timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.2)
        _reap(pid)
    # children left in the session (e.g. a ServerApp) go too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    proc.pid_file.unlink(missing_ok=True)
    return True


def https_status(
    host: str,
    port: int,
    path: str,
    ca_cert: Path | None,
    *,
    method: str = "GET",
    source_address: str | None = None,
    server_hostname: str = "localhost",
    timeout_s: float = 5.0,
) -> int:
    """HTTP status of one request to ``host:port`` (HTTPS verified with ``ca_cert``, HTTP if ``None``).

    ``source_address`` binds the client socket (e.g. ``127.0.0.2`` to test an allowlist on loopback).
    Raises ``OSError`` if no connection or TLS handshake is possible.
    """
    source = (source_address, 0) if source_address else None
    conn: http.client.HTTPConnection
    if ca_cert is None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s, source_address=source)
    else:
        ctx = ssl.create_default_context(cafile=str(ca_cert))
        ctx.check_hostname = True

        class _Conn(http.client.HTTPSConnection):
            def connect(self) -> None:
                sock = socket.create_connection((self.host, self.port), self.timeout, source)
                self.sock = ctx.wrap_socket(sock, server_hostname=server_hostname)

        conn = _Conn(host, port, timeout=timeout_s, source_address=source)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        return conn.getresponse().status
    finally:
        conn.close()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _wait_ready(
    proc: ManagedProcess, child: subprocess.Popen[bytes], host: str, port: int, ca_cert: Path | None, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = proc.log_tail()
            raise ExternalToolError(
                f"the {proc.name} exited with {child.returncode} during start-up; see {proc.log_file}:\n"
                + "\n".join(tail.strip().splitlines()[-6:]),
                log_tail=tail,
            )
        try:
            https_status(host, port, "/health", ca_cert, timeout_s=2.0)
            return
        except OSError:
            time.sleep(0.25)
    raise ExternalToolError(
        f"the {proc.name} did not answer within {timeout_s:.0f} s; see {proc.log_file}", log_tail=proc.log_tail()
    )


def _probe_host(listen_host: str) -> str:
    """Where to reach a listener from this host: loopback for a wildcard bind."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen_host, listen_host)


@dataclass(frozen=True)
class CoordinatorStatus:
    """Which managed processes are running (pids) and whether the SuperLink answers."""

    superlink_pid: int | None
    proxy_pid: int | None
    superlink_healthy: bool

    @property
    def running(self) -> bool:
        """SuperLink up and healthy."""
        return self.superlink_pid is not None and self.superlink_healthy


def _insecure_marker(cfg: CoordinatorConfig) -> Path:
    """Present while a plain-HTTP development SuperLink runs (so ``status`` probes it without TLS)."""
    return cfg.run_dir / "insecure-dev"


def status(cfg: CoordinatorConfig) -> CoordinatorStatus:
    """Current state of the coordinator's processes."""
    link, prox = processes(cfg)
    link_pid = link.pid()
    healthy = False
    if link_pid is not None:
        ca = None if _insecure_marker(cfg).is_file() else pki.PkiPaths(cfg.pki_dir).ca_cert
        try:
            healthy = https_status("127.0.0.1", cfg.admin_port, "/health", ca) == 200
        except OSError:
            healthy = False
    return CoordinatorStatus(link_pid, prox.pid(), healthy)


def start(cfg: CoordinatorConfig, insecure_dev: bool = False, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
    """Start the SuperLink (and, unless ``insecure_dev``, the proxy); return once both answer.

    Sites registered while the SuperLink was down are registered now.

    Raises
    ------
    ConfigError
        If it is already running or a port is taken.
    MissingResourceError
        If the certificates are missing (``cardiofm coordinator init`` creates them).
    ExternalToolError
        If a process exits or does not answer during start-up (its log tail attached).
    """
    link, prox = processes(cfg)
    for p in (link, prox):
        if (pid := p.pid()) is not None:
            raise ConfigError(f"the {p.name} is already running (pid {pid}); stop it with `cardiofm coordinator stop`")
    paths = pki.PkiPaths(cfg.pki_dir)
    listen = [("127.0.0.1", cfg.admin_port)]
    if not insecure_dev:
        pki.verify_server_certificate(paths)
        listen.append((cfg.fleet_host, cfg.fleet_port))
    for host, port in listen:
        if not _port_free(host, port):
            raise ConfigError(f"port {port} on {host} is in use; choose another in {cfg.config_file}")
    env = flower_env(cfg.flwr_home)
    ca = None if insecure_dev else paths.ca_cert
    write_connection_config(cfg.flwr_home, f"127.0.0.1:{cfg.admin_port}", ca)
    marker = _insecure_marker(cfg)
    marker.unlink(missing_ok=True)
    if insecure_dev:
        log.warning(INSECURE_WARNING)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(INSECURE_WARNING + "\n")
    children: list[tuple[ManagedProcess, subprocess.Popen[bytes]]] = []
    try:
        children.append((link, spawn(link, superlink_command(cfg, insecure_dev), env)))
        _wait_ready(link, children[-1][1], "127.0.0.1", cfg.admin_port, ca, ready_timeout_s)
        if not insecure_dev:
            settings = proxy_settings(cfg)
            proxy.write_config(settings)
            proxy.check_config(settings)
            children.append((prox, spawn(prox, proxy.command(settings), env)))
            _wait_ready(prox, children[-1][1], _probe_host(cfg.fleet_host), cfg.fleet_port, ca, ready_timeout_s)
        register_pending_sites(cfg)
    except BaseException:
        for managed, child in reversed(children):
            _kill_child(managed, child)
        raise


def _kill_child(proc: ManagedProcess, child: subprocess.Popen[bytes]) -> None:
    """Stop a process this process started (by its handle: no pid-file or command-line race)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)
        try:
            child.wait(timeout=STOP_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    proc.pid_file.unlink(missing_ok=True)


def register_pending_sites(cfg: CoordinatorConfig) -> CoordinatorConfig:
    """Register every site without a node id (the SuperLink must be running); saves the config."""
    pending = [s for s in cfg.sites if s.node_id is None]
    if not pending:
        return cfg
    cli = FlwrCli(cfg.flwr_home)
    sites = []
    for site in cfg.sites:
        if site.node_id is None:
            site = site.model_copy(update={"node_id": cli.register_supernode(site.public_key, site.name)})
            log.info("registered site %s as node %s", site.name, site.node_id)
        sites.append(site)
    updated = cfg.model_copy(update={"sites": sites})
    updated.save()
    return updated


def stop(cfg: CoordinatorConfig) -> list[str]:
    """Stop the proxy, then the SuperLink; returns the names of those that were running."""
    stopped = []
    for p in reversed(processes(cfg)):
        if terminate(p):
            stopped.append(p.name)
    _insecure_marker(cfg).unlink(missing_ok=True)
    return stopped
