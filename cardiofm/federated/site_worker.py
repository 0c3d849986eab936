"""A site's long-lived worker: torch, the model code and the site's settings loaded once per join, not per message.

Flower 1.42 starts a fresh ClientApp process for every message (``flwr-clientapp`` handles exactly one), and
most of such a process's time would go to importing torch and MONAI and building the model. ``cardiofm site
join`` therefore starts this worker beside its SuperNode. The ClientApp imports only Flower and the config
models; it hands each message's work to the worker over a local socket and relays the answer.

* The socket is a Unix socket in the site's work dir, created with mode 0600 inside a 0700 folder, and every
  connection must answer an HMAC challenge with a per-join random key (:mod:`multiprocessing.connection`);
  the key lives in a 0600 file next to it, never on a command line.
* The worker serves one message at a time (a site trains one round at a time), each in the same process: a
  failure is sent back as an error the ClientApp raises (scrubbed of identifiers there), and the worker
  goes on serving.
* Without a worker in ``node_config`` the ClientApp runs the same :func:`handle` in its own process.

Messages: ``(op, spec_config, arrays, server_round)`` with ``op`` one of ``train``, ``evaluate``, ``save-model``;
``arrays`` maps tensor names to numpy arrays. Answers: ``("ok", arrays, metrics)`` or ``("error", text)``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cardiofm.contracts.federated_run import SiteNodeConfig
from cardiofm.errors import CardioFMError, ConfigError, ExternalToolError

log = logging.getLogger(__name__)

NODE_CONFIG_WORKER_SOCKET: Final[str] = "worker-socket"
NODE_CONFIG_WORKER_KEY_FILE: Final[str] = "worker-key-file"
WORKER_DIR: Final[str] = "worker"
#: How long a ClientApp waits for the worker to accept (it may still be importing torch).
CONNECT_TIMEOUT_S: Final[float] = 120.0
OPS: Final[tuple[str, ...]] = ("train", "evaluate", "save-model")

Arrays = dict[str, npt.NDArray[Any]]
Metrics = dict[str, int | float]


def handle(
    site: SiteNodeConfig, op: str, spec_config: Mapping[str, object], arrays: Arrays, server_round: int
) -> tuple[Arrays, Metrics]:
    """Do one message's work at the site (in the worker, or in the ClientApp when there is none)."""
    import torch

    from cardiofm.federated import task

    if op not in OPS:
        raise ConfigError(f"unknown site operation {op!r}; known: {list(OPS)}")
    spec = task.StageSpec.from_config(dict(spec_config))
    state = {name: torch.from_numpy(np.array(value, copy=True)) for name, value in arrays.items()}
    if op == "train":
        update = task.train_local(site, spec, state, server_round)
        return {n: t.detach().cpu().numpy() for n, t in update.arrays.items()}, update.metrics()
    if op == "evaluate":
        return {}, task.evaluate_local(site, spec, state)
    task.save_global_model(site, spec, state)
    return {}, {"saved": 1}


# -- the ClientApp's side ------------------------------------------------------------------------------------


def run_at_site(
    node_config: Mapping[str, Any], op: str, spec_config: Mapping[str, object], arrays: Arrays, server_round: int
) -> tuple[Arrays, Metrics]:
    """The message's work: by the site's worker when ``node_config`` names one, else in this process.

    Raises
    ------
    CardioFMError
        The worker's error (its text as the worker gave it), or why the worker could not be reached.
    """
    site = SiteNodeConfig.from_node_config(node_config)
    if not site.worker_socket:
        return handle(site, op, spec_config, arrays, server_round)
    key = Path(site.worker_key_file).read_bytes()
    with contextlib.closing(_connect(site.worker_socket, key)) as conn:
        conn.send((op, dict(spec_config), arrays, server_round))
        answer = conn.recv()
    if answer[0] == "ok":
        return answer[1], answer[2]
    raise CardioFMError(str(answer[1]))


def _connect(address: str, key: bytes, timeout_s: float = CONNECT_TIMEOUT_S) -> Connection:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return Client(address, family="AF_UNIX", authkey=key)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if time.monotonic() >= deadline:
                raise ExternalToolError(
                    f"the site worker did not accept within {timeout_s:.0f} s; see worker.log in the work dir"
                ) from exc
            time.sleep(0.2)


# -- the worker ----------------------------------------------------------------------------------------------


def serve(site: SiteNodeConfig, address: Path, key: bytes) -> None:
    """Accept and answer messages until terminated (SIGTERM ends it cleanly and removes the socket)."""
    old_umask = os.umask(0o177)  # the socket file is created 0600
    try:
        listener = Listener(str(address), family="AF_UNIX", authkey=key)
    finally:
        os.umask(old_umask)
    with listener:
        # paid once per join, while the SuperNode connects: what this worker is for (threads: OMP_NUM_THREADS)
        from cardiofm.federated import task  # noqa: F401

        log.info("site worker ready")
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError, AuthenticationError) as exc:  # a caller without the key, or one that left
                log.warning("refused a connection: %s", type(exc).__name__)
                continue
            with conn:
                _answer(site, conn)


def _exit(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _answer(site: SiteNodeConfig, conn: Connection) -> None:
    try:
        op, spec_config, arrays, server_round = conn.recv()
    except (EOFError, OSError, ValueError, TypeError):
        return
    started = time.perf_counter()
    try:
        out, metrics = handle(site, op, spec_config, arrays, server_round)
        reply: tuple[Any, ...] = ("ok", out, metrics)
    except Exception as exc:  # sent back; the ClientApp raises it, scrubbed of the site's identifiers
        log.exception("%s failed", op)
        reply = ("error", f"{type(exc).__name__}: {exc}")
    log.info("%s answered in %.1f s", op, time.perf_counter() - started)
    with contextlib.suppress(OSError):
        conn.send(reply)


def start_worker(
    site: SiteNodeConfig, env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """Start the site's worker; returns the process and the ``node_config`` entries that point the ClientApp to it.

    The key file and socket go to ``<work-dir>/worker/`` (mode 0700); the worker logs to ``worker.log`` there.
    """
    folder = site.work_dir / WORKER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    key_file = folder / "key"
    key_file.unlink(missing_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_bytes(32))
    address = folder / "socket"
    address.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "cardiofm.federated.site_worker", "--dataset", str(site.dataset.resolve())]
    cmd += ["--work-dir", str(site.work_dir.resolve()), "--socket", str(address), "--key-file", str(key_file)]
    with (folder / "worker.log").open("ab") as log_out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ if env is None else env),
            start_new_session=True,
        )
    return proc, {NODE_CONFIG_WORKER_SOCKET: str(address), NODE_CONFIG_WORKER_KEY_FILE: str(key_file)}


def stop_worker(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM the worker, then SIGKILL it if it is still there after ``timeout_s``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    """``python -m cardiofm.federated.site_worker --dataset D --work-dir W --socket S --key-file K``."""
    parser = argparse.ArgumentParser(prog="cardiofm.federated.site_worker")
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    site = SiteNodeConfig(dataset=args.dataset, work_dir=args.work_dir)
    signal.signal(signal.SIGTERM, _exit)  # a clean exit: the socket file is removed
    with contextlib.suppress(SystemExit, KeyboardInterrupt):
        serve(site, args.socket, args.key_file.read_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
