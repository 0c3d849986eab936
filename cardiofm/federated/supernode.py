"""The site side of the federation: a SuperNode that runs only pinned app bundles and ends with its run.

Two pieces:

* :func:`join` runs one SuperNode as a **finite task** (an Airflow task at the hospital): it starts
  the site worker (:mod:`cardiofm.federated.site_worker`: torch and the model code loaded once, not per
  message) and the SuperNode with TLS, the site's key and ``node_config`` (``dataset``, ``work-dir``, ...),
  returns when the ClientApp marks the run finished (after a grace period so the last reply is
  delivered), and raises if the SuperNode dies (TLS or key refused, proxy 403), if it refused an
  app bundle, or on timeout. It never hangs: the SuperNode's whole process session is killed on
  every way out.
* The launcher (``python -m cardiofm.federated.supernode --pin-fab SHA256 ... -- <flower-supernode
  args>``) runs ``flower-supernode`` in-process and checks ``sha256(fab.content)`` of every app
  bundle against the pinned digests **before** the bundle is stored or any of its code runs. An
  unpinned bundle is answered with an ``INVALID_FAB`` error reply (so the ServerApp learns why),
  logged as CRITICAL, the node is deactivated and the launcher exits with
  :attr:`UntrustedAppError.exit_code`. The hook uses flwr internals (pinned flwr 1.42.0); if they
  change, the launcher refuses to start at all (fail closed) instead of running unchecked code.

The done-marker contract for the ClientApp is :func:`mark_run_finished`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cardiofm.contracts.coordinator import SiteJoinParams
from cardiofm.contracts.federated_run import SiteNodeConfig
from cardiofm.errors import (
    ConfigError,
    ExternalToolError,
    FederationTimeoutError,
    UntrustedAppError,
)
from cardiofm.federated.site_worker import start_worker, stop_worker

log = logging.getLogger(__name__)

NODE_CONFIG_DATASET = "dataset"
NODE_CONFIG_WORK_DIR = "work-dir"
#: written into the work dir by the ClientApp when the run ends (same name as ``task.DONE_MARKER``)
DONE_MARKER_NAME = "run-finished"
LOG_NAME = "supernode.log"
_PIN_FLAG = "--pin-fab"
_FORCE_EXIT_S = 5.0


# -- done-marker contract (called by the ClientApp) ---------------------------------------------
def mark_run_finished(node_config: Mapping[str, Any], run_id: int | None = None) -> Path | None:
    """Tell the site's :func:`join` that the federated run is over.

    The ClientApp calls this when it receives the ServerApp's final message (a ``query`` with
    ``action=shutdown``), then replies as usual; :func:`join` waits its grace period so the reply is
    delivered, stops the SuperNode and exits 0.

    Parameters
    ----------
    node_config:
        ``context.node_config``; the marker is ``<work-dir>/run-finished``.
    run_id:
        ``context.run_id``, recorded in the marker.

    Returns
    -------
    Path or None
        The marker written, or ``None`` when the node has no work dir (simulation, a long-lived SuperNode).
    """
    raw = node_config.get(NODE_CONFIG_WORK_DIR)
    if not raw:
        return None
    path = Path(str(raw)) / DONE_MARKER_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    record = {"run_id": run_id, "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(path)
    return path


# -- the launcher: flower-supernode with FAB pinning ---------------------------------------------
class _Unpinned(Exception):
    """Raised inside flwr's pull step for a bundle that is not pinned (an ordinary exception there)."""

    def __init__(self, digest: str) -> None:
        super().__init__(digest)
        self.digest = digest


class _Refused(BaseException):
    """Ends the SuperNode's main loop after the refusal was reported (BaseException: flwr must not catch it)."""


def install_fab_pin(pins: frozenset[str]) -> None:
    """Wrap flwr 1.42's SuperNode pull step so only app bundles with a pinned SHA-256 are accepted.

    Raises
    ------
    ConfigError
        If the flwr internals the check relies on are not there (fail closed).
    """
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode
    from flwr.supernode import start_client_internal as sci

    original = getattr(sci, "_pull_and_store_message", None)
    insert = getattr(sci, "_insert_message", None)
    if original is None or insert is None:
        raise ConfigError("this flwr version lacks the SuperNode hooks FAB pinning needs; use flwr==1.42.0")
    signature = inspect.signature(original)
    if not {"state", "object_store", "receive", "get_fab"} <= signature.parameters.keys():
        raise ConfigError("this flwr version changed the SuperNode pull step; FAB pinning needs flwr==1.42.0")
    flwr_log = logging.getLogger("flwr")
    refused: list[str] = []

    def guarded(*args: Any, **kwargs: Any) -> int | None:
        if refused:
            raise _Refused(refused[0])
        bound = signature.bind(*args, **kwargs)
        receive: Callable[[], Any] = bound.arguments["receive"]
        get_fab: Callable[[str, int], Any] = bound.arguments["get_fab"]
        received: list[Any] = []

        def receive_and_keep() -> Any:
            got = receive()
            if got is not None:
                received[:] = [got[0]]
            return got

        def get_pinned_fab(fab_hash: str, run_id: int) -> Any:
            fab = get_fab(fab_hash, run_id)
            digest = hashlib.sha256(fab.content).hexdigest()
            if digest not in pins or fab.hash_str != digest:
                raise _Unpinned(digest)
            flwr_log.info("App bundle %s is pinned at this site; accepted", digest)
            return fab

        bound.arguments["receive"] = receive_and_keep
        bound.arguments["get_fab"] = get_pinned_fab
        try:
            result: int | None = original(*bound.args, **bound.kwargs)
            return result
        except _Unpinned as exc:
            flwr_log.critical(
                "REFUSED app bundle sha256=%s: not pinned at this site (pinned: %s). Nothing of it was stored "
                "or run; this SuperNode stops.",
                exc.digest,
                ", ".join(sorted(pins)),
            )
            refused.append(exc.digest)
            if not received:
                raise _Refused(exc.digest) from None
            message = received[0]
            error = Error(int(ErrorCode.INVALID_FAB), f"app bundle {exc.digest} is not pinned at this site")
            insert(Message(error, reply_to=message), bound.arguments["state"], bound.arguments["object_store"])
            return int(message.metadata.run_id)

    sci._pull_and_store_message = guarded


def _force_exit(code: int) -> None:
    """Run flwr's exit handlers (stop the Runtime API) and exit, even if a non-daemon thread hangs."""
    watchdog = threading.Timer(_FORCE_EXIT_S, os._exit, (code,))
    watchdog.daemon = True
    watchdog.start()
    with contextlib.suppress(Exception):
        from flwr.supercore.exit.exit_handler import trigger_exit_handlers

        trigger_exit_handlers(run_before_force_exit=True)
        trigger_exit_handlers(run_before_force_exit=False)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launcher_main(argv: list[str]) -> int:
    """``python -m cardiofm.federated.supernode --pin-fab SHA256 [...] -- <flower-supernode args>``."""
    if "--" not in argv:
        print("usage: --pin-fab SHA256 [--pin-fab SHA256 ...] -- <flower-supernode arguments>", file=sys.stderr)
        return ConfigError.exit_code
    split = argv.index("--")
    own, rest = argv[:split], argv[split + 1 :]
    pins = {own[i + 1].strip().lower() for i, arg in enumerate(own[:-1]) if arg == _PIN_FLAG}
    if not pins or len(own) != 2 * len(pins):
        print("the launcher needs at least one --pin-fab SHA256 and nothing else before --", file=sys.stderr)
        return ConfigError.exit_code
    try:
        install_fab_pin(frozenset(pins))
    except ConfigError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return exc.exit_code
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *rest]
    try:
        flower_supernode()
    except _Refused:
        _force_exit(UntrustedAppError.exit_code)
    return 0


# -- join: the finite site task ------------------------------------------------------------------
@dataclass(frozen=True)
class JoinResult:
    """Outcome of a successful :func:`join`."""

    run_id: int | None
    seconds: float
    log_file: Path


def node_config_for(params: SiteJoinParams) -> dict[str, str | int | float | bool]:
    """The SuperNode's ``node_config``: dataset and work dir (which holds the done marker) plus extra facts.

    Raises
    ------
    ConfigError
        If an extra key would override ``dataset`` or ``work-dir``.
    """
    reserved = {NODE_CONFIG_DATASET, NODE_CONFIG_WORK_DIR} & params.node_config.keys()
    if reserved:
        raise ConfigError(f"node_config keys {sorted(reserved)} are set by cardiofm itself; remove them")
    return {
        NODE_CONFIG_DATASET: str(params.dataset.resolve()),
        NODE_CONFIG_WORK_DIR: str(params.work_dir.resolve()),
        **params.node_config,
    }


def supernode_command(params: SiteJoinParams, worker: Mapping[str, str] | None = None) -> list[str]:
    """The launcher command line (this interpreter, FAB pins, then ``flower-supernode`` arguments).

    ``worker``: the ``node_config`` entries naming the site worker (:func:`.site_worker.start_worker`).
    """
    from cardiofm.federated.flwr_cli import format_config

    cmd = [sys.executable, "-m", "cardiofm.federated.supernode"]
    for digest in params.pinned_fab_sha256:
        cmd += [_PIN_FLAG, digest]
    cmd += ["--", "--superlink", params.superlink, "--port", str(params.runtime_port), "--host", "127.0.0.1"]
    if params.insecure_dev:
        cmd.append("--insecure")
    else:
        if params.ca_cert is None or params.private_key is None:
            raise ConfigError("a TLS join needs the CA certificate and the site private key (see params.check)")
        cmd += ["--root-certificates", str(params.ca_cert.resolve())]
        cmd += ["--auth-supernode-private-key", str(params.private_key.resolve())]
    cmd += ["--node-config", format_config({**node_config_for(params), **(worker or {})})]
    return cmd


def supernode_env(params: SiteJoinParams) -> dict[str, str]:
    """Environment of the SuperNode: telemetry and update check off, own ``FLWR_HOME``, venv on ``PATH``."""
    from cardiofm.federated.flwr_cli import flower_env

    return flower_env(params.work_dir / "flwr-home")


def _kill_session(child: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int:
    """SIGTERM the SuperNode's session (graceful: it deactivates itself), then SIGKILL; returns its exit code."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        code = child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        code = child.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)  # the SuperExec and any ClientApp left behind
    return code


def exit_on_signals() -> Callable[[], None]:
    """Turn SIGTERM/SIGHUP into ``SystemExit`` (so ``finally`` blocks stop the child processes).

    Returns a function restoring the previous handlers (a no-op outside the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def _raise(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def join(params: SiteJoinParams, poll_s: float = 0.5) -> JoinResult:
    """Run this site's SuperNode until the federated run ends.

    Raises
    ------
    ConfigError, MissingResourceError
        For missing or invalid inputs (checked before anything starts).
    UntrustedAppError
        If the coordinator shipped an app bundle this site did not pin.
    FederationTimeoutError
        If the run did not finish within ``params.timeout_s``.
    ExternalToolError
        If the SuperNode exited before the run finished (TLS, key or allowlist refusal, crash);
        its log tail is attached.
    """
    params.check()
    if params.insecure_dev:
        log.warning("INSECURE DEVELOPMENT MODE: plain HTTP, no node key. Never use this with real data.")
    elif params.private_key is not None:
        from cardiofm.federated.pki import load_site_private_key

        load_site_private_key(params.private_key)
    params.work_dir.mkdir(parents=True, exist_ok=True)
    marker = params.work_dir / DONE_MARKER_NAME
    marker.unlink(missing_ok=True)
    log_file = params.work_dir / LOG_NAME
    started = time.monotonic()
    restore = exit_on_signals()
    # torch and the model code load once, in the worker, while the SuperNode connects (not once per message)
    worker, worker_config = start_worker(SiteNodeConfig(dataset=params.dataset, work_dir=params.work_dir))
    try:
        cmd = supernode_command(params, worker_config)
        with log_file.open("ab") as out:
            child = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=supernode_env(params),
                start_new_session=True,
            )
    except BaseException:
        stop_worker(worker)
        restore()
        raise
    try:
        deadline = started + params.timeout_s
        while True:
            code = child.poll()
            if marker.is_file():
                break
            if code is not None:
                tail = _tail(log_file)
                if code == UntrustedAppError.exit_code:
                    raise UntrustedAppError(
                        "the coordinator sent an app bundle this site did not pin; nothing of it ran. Compare the "
                        f"refused sha256 in {log_file} with the reviewed release and pin it with --pin-fab if approved"
                    )
                raise ExternalToolError(
                    f"the SuperNode exited with {code} before the run finished (TLS, site key or allowlist "
                    f"refused, or a crash); see {log_file}",
                    log_tail=tail,
                )
            if time.monotonic() >= deadline:
                raise FederationTimeoutError(
                    f"the federated run did not finish within {params.timeout_s:.0f} s; SuperNode stopped "
                    f"(log: {log_file})"
                )
            time.sleep(poll_s)
        log.info("run finished; waiting %.0f s so the last reply is delivered", params.grace_s)
        grace_end = time.monotonic() + params.grace_s
        while time.monotonic() < grace_end and child.poll() is None:
            time.sleep(min(poll_s, params.grace_s))
    finally:
        _kill_session(child)
        stop_worker(worker)
        restore()
    try:
        run_id = json.loads(marker.read_text()).get("run_id")
    except (OSError, ValueError):
        run_id = None
    return JoinResult(run_id=run_id, seconds=time.monotonic() - started, log_file=log_file)


if __name__ == "__main__":
    sys.exit(launcher_main(sys.argv[1:]))
