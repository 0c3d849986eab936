"""Site-side helpers without processes: join parameters, node config, the done marker, the launcher's argv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cardiofm.contracts.coordinator import CoordinatorConfig, SiteJoinParams
from cardiofm.errors import ConfigError, MissingResourceError
from cardiofm.federated import pki
from cardiofm.federated.flwr_cli import format_config, parse_assignments, write_connection_config
from cardiofm.federated.supernode import (
    DONE_MARKER_NAME,
    launcher_main,
    mark_run_finished,
    node_config_for,
    supernode_command,
)

DIGEST = "ab" * 32


def _params(tmp_path: Path, **kw: object) -> SiteJoinParams:
    bundle = tmp_path / "bundle"
    if not (bundle / "site-a.key").exists():
        pki.create_site_keypair(bundle, "site-a")
        pki.create_ca(tmp_path / "pki")
    (tmp_path / "data").mkdir(exist_ok=True)
    values: dict[str, object] = {
        "superlink": "superlink.example.org:9443",
        "ca_cert": tmp_path / "pki" / "ca.crt",
        "private_key": bundle / "site-a.key",
        "dataset": tmp_path / "data",
        "work_dir": tmp_path / "work",
        "pinned_fab_sha256": [DIGEST.upper()],
    }
    values.update(kw)
    return SiteJoinParams.from_values(values)


def test_mark_run_finished_writes_the_marker_join_waits_for(tmp_path: Path) -> None:
    params = _params(tmp_path)
    node_config = node_config_for(params)
    marker = mark_run_finished(node_config, run_id=42)
    assert marker == (tmp_path / "work" / DONE_MARKER_NAME).resolve()
    assert json.loads(marker.read_text())["run_id"] == 42
    assert mark_run_finished({"partition-id": 0}) is None  # simulation: no marker


def test_supernode_command_is_tls_with_key_and_pins(tmp_path: Path) -> None:
    params = _params(tmp_path)
    cmd = supernode_command(params)
    rest = cmd[cmd.index("--") + 1 :]
    assert cmd[cmd.index("--pin-fab") + 1] == DIGEST  # normalised to lower case
    assert "--insecure" not in rest
    assert rest[rest.index("--root-certificates") + 1] == str(params.ca_cert.resolve())  # type: ignore[union-attr]
    assert rest[rest.index("--auth-supernode-private-key") + 1] == str(params.private_key.resolve())  # type: ignore[union-attr]
    assert rest[rest.index("--host") + 1] == "127.0.0.1"
    node_config = rest[rest.index("--node-config") + 1]
    assert node_config == f'dataset="{(tmp_path / "data").resolve()}" work-dir="{(tmp_path / "work").resolve()}"'


def test_insecure_needs_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--insecure-dev"):
        _params(tmp_path, ca_cert=None, private_key=None).check()
    params = _params(tmp_path, ca_cert=None, private_key=None, insecure_dev=True)
    params.check()
    assert "--insecure" in supernode_command(params)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("superlink", "no-port", "host:port"),
        ("superlink", "host:99999", "host:port"),
        ("pinned_fab_sha256", ["601b1a7e"], "SHA-256"),
        ("pinned_fab_sha256", [], "pinned_fab_sha256"),
        ("timeout_s", 0, "timeout_s"),
    ],
)
def test_invalid_join_settings_name_the_setting(tmp_path: Path, field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _params(tmp_path, **{field: value})


def test_missing_dataset_and_reserved_node_config(tmp_path: Path) -> None:
    with pytest.raises(MissingResourceError, match="cardiofm prepare"):
        _params(tmp_path, dataset=tmp_path / "nope").check()
    with pytest.raises(ConfigError, match="set by cardiofm"):
        node_config_for(_params(tmp_path, node_config={"work-dir": "/elsewhere"}))


def test_config_strings_flower_can_parse(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    values = {"dataset": str(tmp_path / "a b"), "rounds": 3, "lr": 0.5, "dry": True}
    assert parse_config_args([format_config(values)]) == values
    with pytest.raises(ConfigError, match="quotes"):
        format_config({"x": 'a"b'})
    with pytest.raises(ConfigError, match="one word"):
        format_config({"a b": 1})
    assert parse_assignments(["n=3", "lr=0.1", "on=true", "name=x=y"]) == {
        "n": 3,
        "lr": 0.1,
        "on": True,
        "name": "x=y",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignments(["novalue"])


def test_connection_config(tmp_path: Path) -> None:
    text = write_connection_config(tmp_path, "127.0.0.1:9093", tmp_path / "ca.crt").read_text()
    assert 'default = "coordinator"' in text
    assert 'address = "127.0.0.1:9093"' in text
    assert f'root-certificates = "{(tmp_path / "ca.crt").resolve()}"' in text
    assert "insecure = true" in write_connection_config(tmp_path, "127.0.0.1:9093", None).read_text()


@pytest.mark.parametrize("argv", [[], ["--pin-fab", DIGEST], ["--", "--insecure"], ["--pin-fab", DIGEST, "-x", "--"]])
def test_launcher_refuses_to_start_without_pins(argv: list[str]) -> None:
    assert launcher_main(argv) == ConfigError.exit_code


def test_coordinator_config_round_trip(tmp_path: Path) -> None:
    cfg = CoordinatorConfig.from_values({"work_dir": tmp_path, "ip_addresses": ["192.0.2.1"], "allow": ["10.0.0.1"]})
    cfg.save()
    assert CoordinatorConfig.load(tmp_path) == cfg
    assert cfg.allow == ["10.0.0.1/32"]
    with pytest.raises(MissingResourceError, match="coordinator init"):
        CoordinatorConfig.load(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="fleet_host"):
        CoordinatorConfig.from_values({"work_dir": tmp_path, "fleet_host": "example.org"})
