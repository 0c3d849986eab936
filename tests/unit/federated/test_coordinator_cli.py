"""``cardiofm coordinator init`` / ``register-site`` without a running SuperLink."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from cardiofm.cli.main import app
from cardiofm.errors import ConfigError, MissingResourceError
from cardiofm.federated import pki

runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str, BaseException | None]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output, result.exception


def test_init_then_register_sites(tmp_path: Path) -> None:
    work = tmp_path / "coord"
    code, out, exc = _invoke("coordinator", "init", "--dir", str(work), "--name", "fl.example.org", "--ip", "192.0.2.5")
    assert code == 0, exc
    assert "SAN DNS localhost, fl.example.org; IP 127.0.0.1, 192.0.2.5" in out
    # generated key pair: a bundle to hand over, the public key recorded, registration deferred
    code, out, exc = _invoke("coordinator", "register-site", "--dir", str(work), "--name", "site-a")
    assert code == 0, exc
    bundle = work / "sites" / "site-a" / "bundle"
    assert stat.S_IMODE((bundle / "site-a.key").stat().st_mode) == 0o600
    assert (bundle / "ca.crt").read_bytes() == (work / "pki" / "ca.crt").read_bytes()
    assert "next `cardiofm coordinator start`" in out
    # a key the site made itself
    own = pki.create_site_keypair(tmp_path / "hospital", "site-b")
    code, _, exc = _invoke(
        "coordinator", "register-site", "--dir", str(work), "--name", "site-b", "--public-key", str(own.public_key)
    )
    assert code == 0, exc
    config = json.loads((work / "coordinator.json").read_text())
    assert [(s["name"], s["node_id"]) for s in config["sites"]] == [("site-a", None), ("site-b", None)]
    assert not (work / "sites" / "site-b" / "bundle").exists()
    # refusals
    _, _, exc = _invoke("coordinator", "register-site", "--dir", str(work), "--name", "site-a")
    assert isinstance(exc, ConfigError)
    _, _, exc = _invoke(
        "coordinator", "register-site", "--dir", str(work), "--name", "x", "--public-key", str(own.private_key)
    )
    assert isinstance(exc, ConfigError)
    _, _, exc = _invoke("coordinator", "init", "--dir", str(work))
    assert isinstance(exc, ConfigError)
    assert "--renew" in str(exc)
    # a site never registered with the SuperLink is simply dropped from the registry
    assert _invoke("coordinator", "remove-site", "--dir", str(work), "--name", "site-b")[0] == 0
    assert [s["name"] for s in json.loads((work / "coordinator.json").read_text())["sites"]] == ["site-a"]
    _, _, exc = _invoke("coordinator", "remove-site", "--dir", str(work), "--name", "site-b")
    assert isinstance(exc, ConfigError)


def test_renew_keeps_the_ca(tmp_path: Path) -> None:
    work = tmp_path / "coord"
    assert _invoke("coordinator", "init", "--dir", str(work))[0] == 0
    ca = (work / "pki" / "ca.crt").read_bytes()
    code, _, exc = _invoke("coordinator", "init", "--dir", str(work), "--renew", "--name", "new.example.org")
    assert code == 0, exc
    assert (work / "pki" / "ca.crt").read_bytes() == ca
    assert pki.server_sans(work / "pki" / "server.pem")[0] == ["localhost", "new.example.org"]
    pki.verify_server_certificate(pki.PkiPaths(work / "pki"))


def test_commands_on_an_uninitialised_dir_say_what_to_run(tmp_path: Path) -> None:
    for command in ("start", "status", "stop"):
        _, _, exc = _invoke("coordinator", command, "--dir", str(tmp_path))
        assert isinstance(exc, MissingResourceError), command
        assert "cardiofm coordinator init" in str(exc)


def test_bad_allowlist_is_a_config_error(tmp_path: Path) -> None:
    _, _, exc = _invoke("coordinator", "init", "--dir", str(tmp_path), "--allow", "10.0.0.0/99")
    assert isinstance(exc, ConfigError)
    assert "CIDR" in str(exc)


def test_init_records_the_listening_addresses(tmp_path: Path) -> None:
    work = tmp_path / "coord"
    args = ["--fleet-host", "127.0.0.1", "--fleet-port", "19443", "--admin-port", "19093"]
    code, _, exc = _invoke("coordinator", "init", "--dir", str(work), *args)
    assert code == 0, exc
    cfg = json.loads((work / "coordinator.json").read_text())
    assert (cfg["fleet_host"], cfg["fleet_port"], cfg["admin_port"]) == ("127.0.0.1", 19443, 19093)


def test_start_on_an_uninitialised_dir_fails_also_in_insecure_dev_mode(tmp_path: Path) -> None:
    code, _, exc = _invoke("coordinator", "start", "--dir", str(tmp_path / "none"), "--insecure-dev")
    assert code != 0
    assert isinstance(exc, MissingResourceError | ConfigError)
    assert "init" in str(exc)


def test_join_refuses_settings_that_would_redirect_the_site(tmp_path: Path) -> None:
    data = tmp_path / "ds"
    data.mkdir()
    base = ["site", "join", "--superlink", "127.0.0.1:9", "--data", str(data), "--pin-fab", "a" * 64]
    base += ["--work-dir", str(tmp_path / "w"), "--insecure-dev"]
    _, _, exc = _invoke(*base, "--node-config", f"dataset={tmp_path}")  # another dataset than --data
    assert isinstance(exc, ConfigError)
    assert "dataset" in str(exc)
    _, _, exc = _invoke(*base, "--grace-s", "-1")
    assert isinstance(exc, ConfigError)
    assert "grace_s" in str(exc)
