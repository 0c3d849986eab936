"""``cardiofm coordinator serve``: the coordinator as a container runs it (the chart's command).

A real SuperLink and proxy start from a settings file and TLS files in a Kubernetes TLS-secret layout;
listed sites are registered, a site removed from the settings is unregistered on the next start, SIGTERM
stops both processes with exit 0, and missing TLS material is a clear error before anything starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cardiofm.contracts.coordinator import CoordinatorConfig
from cardiofm.errors import MissingResourceError
from cardiofm.federated import pki, superlink
from cardiofm.federated.flwr_cli import FlwrCli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CARDIOFM = str(Path(sys.executable).parent / "cardiofm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tls_secret(folder: Path) -> Path:
    """What a kubernetes.io/tls Secret with ca.crt mounts: ca.crt, tls.crt, tls.key."""
    issued = pki.create_ca(folder / "issuer")
    pki.create_server_certificate(issued, ["coordinator.example.org"], [])
    tls = folder / "tls"
    tls.mkdir()
    shutil.copyfile(issued.ca_cert, tls / "ca.crt")
    shutil.copyfile(issued.server_cert, tls / "tls.crt")
    shutil.copyfile(issued.server_key, tls / "tls.key")
    return tls


def _serve(state: Path, settings: dict[str, object], tls: Path, tmp: Path) -> subprocess.Popen[str]:
    path = tmp / "coordinator.yaml"
    path.write_text(yaml.safe_dump(settings))
    return subprocess.Popen(
        [CARDIOFM, "coordinator", "serve", "--dir", str(state), "--settings", str(path), "--tls-dir", str(tls)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_serving(state: Path, proc: subprocess.Popen[str], fleet_port: int, ca: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        try:
            if superlink.https_status("127.0.0.1", fleet_port, "/health", ca) == 200:
                cfg = CoordinatorConfig.load(state)
                if all(s.node_id is not None for s in cfg.sites):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"coordinator did not come up: {proc.communicate()[0][-3000:]}")


def _terminate(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


def test_serve_applies_settings_registers_sites_and_stops_on_sigterm(tmp_path: Path) -> None:
    tls = _tls_secret(tmp_path)
    state = tmp_path / "state"
    north = pki.create_site_keypair(tmp_path / "bundles" / "north", "north")
    south = pki.create_site_keypair(tmp_path / "bundles" / "south", "south")
    settings: dict[str, object] = {
        "dns_names": ["coordinator.example.org"],
        "fleet_port": _free_port(),
        "admin_port": _free_port(),
        "allow": ["127.0.0.1/32"],
        "sites": [
            {"name": "north", "public_key": north.public_key.read_text()},
            {"name": "south", "public_key": south.public_key.read_text()},
        ],
    }
    proc = _serve(state, settings, tls, tmp_path)
    try:
        _wait_serving(state, proc, int(settings["fleet_port"]), tls / "ca.crt")  # type: ignore[call-overload]
        cfg = CoordinatorConfig.load(state)
        assert [s.name for s in cfg.sites] == ["north", "south"]
        assert cfg.allow == ["127.0.0.1/32"]
        assert oct((cfg.pki_dir / pki.SERVER_KEY_NAME).stat().st_mode & 0o777) == "0o600"
        nodes = {int(n["node-id"]) for n in FlwrCli(cfg.flwr_home).list_supernodes()}
        south_node = cfg.site("south").node_id  # type: ignore[union-attr]
        assert {s.node_id for s in cfg.sites} <= nodes
    finally:
        code, out = _terminate(proc)
    assert code == 0, out[-3000:]
    assert "coordinator stopped" in out
    assert superlink.status(cfg).superlink_pid is None
    assert superlink.status(cfg).proxy_pid is None

    # south leaves the consortium: removed from the settings, its node is unregistered on the next start
    settings["sites"] = settings["sites"][:1]  # type: ignore[index]
    proc = _serve(state, settings, tls, tmp_path)
    try:
        _wait_serving(state, proc, int(settings["fleet_port"]), tls / "ca.crt")  # type: ignore[call-overload]
        cfg = CoordinatorConfig.load(state)
        assert [s.name for s in cfg.sites] == ["north"]
        # serve unregisters right after the SuperLink is up: wait for it (a bounded wait, never a pass by default)
        active: set[int] = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = FlwrCli(cfg.flwr_home).list_supernodes()
            active = {int(n["node-id"]) for n in listed if n.get("status") != "unregistered"}
            if south_node not in active:
                break
            time.sleep(0.5)
        assert south_node not in active, listed
        assert cfg.site("north").node_id in active  # type: ignore[union-attr]
    finally:
        code, out = _terminate(proc)
    assert code == 0, out[-3000:]


def test_missing_tls_material_is_a_clear_error_before_anything_starts(tmp_path: Path) -> None:
    tls = _tls_secret(tmp_path)
    (tls / "ca.crt").unlink()
    settings = {"fleet_port": _free_port(), "admin_port": _free_port(), "allow": ["10.0.0.0/8"]}
    proc = _serve(tmp_path / "state", settings, tls, tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == MissingResourceError.exit_code, out
    assert "ca.crt" in out
    assert "cert-manager" in out
    assert not (tmp_path / "state" / "run" / "superlink.pid").exists()
    assert os.path.isdir(tmp_path / "state")
