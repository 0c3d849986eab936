"""Thin wrappers over the ``flwr`` admin CLI (Control API), for the coordinator host only.

Every call runs ``flwr ... --format json`` with the environment of :func:`flower_env` and parses the
JSON it prints. ``flwr run`` exits 0 even when the run fails, so :func:`wait_for_run` polls
``flwr ls --run-id X`` for the real status and raises unless it is ``finished:completed``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cardiofm.errors import ConfigError, ExternalToolError, MissingResourceError

log = logging.getLogger(__name__)

CONNECTION = "coordinator"
STATUS_COMPLETED = "finished:completed"
_CLI_TIMEOUT_S = 120.0


def venv_bin() -> Path:
    """The folder of this interpreter's console scripts (``flwr``, ``flower-superlink``, ...).

    Not resolved: a virtual environment's ``python`` is a symlink to the base interpreter.
    """
    return Path(sys.executable).parent


def flower_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process cardiofm starts.

    Telemetry and the update check are off (both phone home to the Flower servers by default),
    ``FLWR_HOME`` points into the caller's work dir, and this venv's ``bin`` comes first on
    ``PATH`` (SuperLink and SuperNode start ``flower-superexec`` and ``flwr-clientapp`` by name).

    Parameters
    ----------
    flwr_home:
        Folder for Flower's home (connection config, extracted app bundles).
    base:
        Environment to start from; ``os.environ`` by default.
    """
    env = dict(os.environ if base is None else base)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_HOME"] = str(flwr_home)
    bin_dir = str(venv_bin())
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *path])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def executable(name: str) -> str:
    """Absolute path of a Flower console script in this venv.

    Raises
    ------
    MissingResourceError
        If it is absent (the ``federated`` extra is not installed).
    """
    path = venv_bin() / name
    if not path.is_file():
        raise MissingResourceError(f"{name} not found next to {sys.executable}: install cardiofm[federated]")
    return str(path)


def write_connection_config(flwr_home: Path, address: str, ca_cert: Path | None) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one connection, ``coordinator``, as the default.

    Parameters
    ----------
    flwr_home:
        Flower home folder.
    address:
        ``host:port`` of the SuperLink (its loopback address on the coordinator host).
    ca_cert:
        CA certificate to verify it; ``None`` writes ``insecure = true`` (development only).
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]", f'address = "{address}"']
    if ca_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(ca_cert.resolve()))}")
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class FlwrCli:
    """How to call the ``flwr`` CLI: its home (with ``config.toml``) and connection name."""

    flwr_home: Path
    connection: str = CONNECTION
    timeout_s: float = _CLI_TIMEOUT_S

    def call(self, args: list[str]) -> dict[str, Any]:
        """Run ``flwr <args> --format json`` and return the parsed JSON.

        Raises
        ------
        ExternalToolError
            If ``flwr`` fails, times out, prints no JSON, or reports ``success: false``.
        """
        cmd = [executable("flwr"), *args, "--format", "json"]
        try:
            proc = subprocess.run(
                cmd,
                env=flower_env(self.flwr_home),
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ExternalToolError(f"`flwr {args[0]}` did not answer within {self.timeout_s:.0f} s") from exc
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except json.JSONDecodeError:
            data = {}
        if proc.returncode != 0 or not data.get("success", False):
            detail = data.get("error-message") or (proc.stderr or proc.stdout).strip()[-1500:]
            last = str(detail).strip().splitlines()[-1] if str(detail).strip() else "no output"
            raise ExternalToolError(
                f"`flwr {' '.join(args[:2])}` failed (exit {proc.returncode}): {last}", log_tail=str(detail)
            )
        return dict(data)

    # -- SuperNode registry -------------------------------------------------------------------
    def register_supernode(self, public_key: Path, name: str) -> int:
        """Register a site's public key; returns the node id the SuperLink assigned."""
        data = self.call(["supernode", "register", str(public_key), self.connection, "--name", name])
        return int(data["node-id"])

    def unregister_supernode(self, node_id: int) -> None:
        """Remove a SuperNode (its key is refused from then on; a connected node is dropped)."""
        self.call(["supernode", "unregister", str(node_id), self.connection])

    def list_supernodes(self) -> list[dict[str, Any]]:
        """Registered SuperNodes as ``flwr supernode ls`` reports them (``node-id``, ``status``, ...)."""
        return list(self.call(["supernode", "ls", self.connection]).get("nodes", []))

    # -- runs -----------------------------------------------------------------------------------
    def start_run(self, app_dir: Path, run_config: Mapping[str, str | int | float | bool]) -> int:
        """Submit a run (detached) and return its id; the run's outcome comes from :meth:`run_info`."""
        args = ["run", str(app_dir), self.connection]
        if run_config:
            args += ["--run-config", format_config(run_config)]
        return int(self.call(args)["run-id"])

    def run_info(self, run_id: int) -> dict[str, Any]:
        """One run as ``flwr ls --run-id`` reports it (``status``, ``status-details``, ``fab-hash``, ...)."""
        runs = self.call(["ls", self.connection, "--run-id", str(run_id)]).get("runs", [])
        if not runs:
            raise ExternalToolError(f"the SuperLink does not know run {run_id}")
        return dict(runs[0])

    def stop_run(self, run_id: int) -> None:
        """Stop a run (its status becomes ``finished:stopped``)."""
        self.call(["stop", str(run_id), self.connection])

    def wait_for_run(self, run_id: int, timeout_s: float, poll_s: float = 5.0) -> dict[str, Any]:
        """Poll until the run has finished and return its record.

        Raises
        ------
        ExternalToolError
            If the run finished with any status other than ``finished:completed`` (the status
            details go into the message), or did not finish within ``timeout_s`` (it is then stopped).
        """
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            info = self.run_info(run_id)
            status = str(info.get("status", ""))
            if status != last:
                log.info("run %s: %s", run_id, status)
                last = status
            if status.startswith("finished"):
                if status != STATUS_COMPLETED:
                    raise ExternalToolError(
                        f"run {run_id} ended as {status}: {info.get('status-details') or 'no details'}; "
                        f"see `flwr log {run_id}` on the coordinator"
                    )
                return info
            if time.monotonic() >= deadline:
                try:
                    self.stop_run(run_id)
                except ExternalToolError:
                    log.warning("could not stop run %s after its timeout", run_id)
                raise ExternalToolError(f"run {run_id} did not finish within {timeout_s:.0f} s (status {status})")
            time.sleep(poll_s)


def toml_value(value: str | int | float | bool) -> str:
    """``value`` as a TOML value (the syntax of ``[tool.flwr.app.config]`` and of ``--run-config``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def format_config(values: Mapping[str, str | int | float | bool]) -> str:
    """``k=v`` pairs in the TOML-value syntax Flower's ``--run-config``/``--node-config`` parse.

    Raises
    ------
    ConfigError
        For a key with spaces or ``=``, or a string value Flower's parser cannot carry
        (double quotes, backslashes, line breaks).
    """
    parts = []
    for key, value in values.items():
        if not key or any(c in key for c in ' ="\n'):
            raise ConfigError(f"config key {key!r} must be one word (kebab-case, no '=' or quotes)")
        if isinstance(value, str) and any(c in value for c in '"\\\n\r'):
            raise ConfigError(f"config value of {key!r} must not contain quotes, backslashes or line breaks")
        parts.append(f"{key}={toml_value(value)}")
    return " ".join(parts)


def parse_assignments(pairs: list[str]) -> dict[str, str | int | float | bool]:
    """Parse ``k=v`` command-line assignments; ``true``/``false``, ints and floats are typed.

    Raises
    ------
    ConfigError
        For an item without ``=``.
    """
    out: dict[str, str | int | float | bool] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{pair!r} must be key=value")
        value: str | int | float | bool = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    continue
        out[key.strip()] = value
    return out


def flwr_build(app_dir: Path, flwr_home: Path, dest_dir: Path) -> Path:
    """Build the app bundle (FAB) of ``app_dir`` with ``flwr build`` and move it into ``dest_dir``.

    Raises
    ------
    MissingResourceError
        If ``app_dir`` has no ``pyproject.toml``.
    ConfigError
        If ``flwr build`` rejects the app (e.g. its folder name contains ``_``), naming its last output lines.
    """
    app_dir = app_dir.resolve()
    if not (app_dir / "pyproject.toml").is_file():
        raise MissingResourceError(f"{app_dir} is not a Flower app folder (no pyproject.toml)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fab-", dir=dest_dir) as tmp:
        proc = subprocess.run(
            [executable("flwr"), "build", "--app", str(app_dir)],
            cwd=tmp,
            env=flower_env(flwr_home),
            capture_output=True,
            text=True,
            timeout=_CLI_TIMEOUT_S,
            check=False,
        )
        fabs = list(Path(tmp).glob("*.fab"))
        if proc.returncode != 0 or len(fabs) != 1:
            raise ConfigError(
                f"`flwr build` rejected {app_dir} (the folder name must match [A-Za-z][A-Za-z0-9-]*): "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}"
            )
        return fabs[0].replace(dest_dir / fabs[0].name)


def fab_sha256(app_dir: Path, flwr_home: Path) -> str:
    """SHA-256 of the app bundle (FAB) ``flwr build`` makes from ``app_dir``; sites pin this value.

    The build is deterministic, so the hash equals the one of the bundle ``flwr run`` ships.

    Raises
    ------
    MissingResourceError, ConfigError
        As :func:`flwr_build`.
    """
    with tempfile.TemporaryDirectory(prefix="fab-hash-") as tmp:
        return hashlib.sha256(flwr_build(app_dir, flwr_home, Path(tmp)).read_bytes()).hexdigest()
