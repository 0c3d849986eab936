"""The rendered nginx config of the allowlisting proxy: what is exposed, to whom, and how."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cardiofm.contracts.coordinator import CoordinatorConfig
from cardiofm.errors import ConfigError
from cardiofm.federated import proxy
from cardiofm.federated.superlink import proxy_settings


def _settings(tmp_path: Path, allow: list[str] | None = None, **kw: object) -> proxy.ProxySettings:
    values: dict[str, object] = {
        "prefix": tmp_path / "proxy",
        "listen_host": "0.0.0.0",
        "listen_port": 9443,
        "upstream_port": 9093,
        "server_cert": tmp_path / "pki" / "server.pem",
        "server_key": tmp_path / "pki" / "server.key",
        "ca_cert": tmp_path / "pki" / "ca.crt",
        "allow": ["192.0.2.0/24", "198.51.100.7/32"] if allow is None else allow,
    }
    values.update(kw)
    return proxy.ProxySettings(**values)  # type: ignore[arg-type]


def _locations(text: str) -> dict[str, str]:
    """``location`` selector -> body (the config nests no braces inside a location)."""
    return {m.group(1).strip(): m.group(2) for m in re.finditer(r"location\s+([^{]+)\{([^}]*)\}", text)}


def test_only_fleet_and_health_are_proxied(tmp_path: Path) -> None:
    text = proxy.render_config(_settings(tmp_path))
    locations = _locations(text)
    assert set(locations) == {"/v1/fleet/", "= /health", "/"}
    assert text.count("proxy_pass ") == 2
    assert "proxy_pass" not in locations["/"]
    assert locations["/"].strip() == "return 403;"
    directives = "\n".join(line for line in text.splitlines() if not line.strip().startswith("#"))
    for blocked in ("/v1/control", "/v1/runtime", "/docs", "/openapi.json"):
        assert blocked not in directives


@pytest.mark.parametrize("selector", ["/v1/fleet/", "= /health"])
def test_allowlist_then_deny_all_in_each_proxied_location(tmp_path: Path, selector: str) -> None:
    body = _locations(proxy.render_config(_settings(tmp_path)))[selector]
    rules = [line.strip() for line in body.splitlines() if line.strip().startswith(("allow", "deny"))]
    assert rules == ["allow 192.0.2.0/24;", "allow 198.51.100.7/32;", "deny all;"]


@pytest.mark.parametrize("selector", ["/v1/fleet/", "= /health"])
def test_upstream_is_loopback_tls_verified_as_localhost(tmp_path: Path, selector: str) -> None:
    s = _settings(tmp_path)
    body = _locations(proxy.render_config(s))[selector]
    assert "proxy_pass https://127.0.0.1:9093;" in body
    assert "proxy_ssl_verify on;" in body
    assert "proxy_ssl_name localhost;" in body
    assert f"proxy_ssl_trusted_certificate {s.ca_cert};" in body
    assert "proxy_http_version 1.1;" in body
    assert "proxy_read_timeout 600s;" in body
    # the client address comes from nginx, never from a header the client sent
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in body


def test_tls_listener_body_limit_and_own_paths(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    text = proxy.render_config(s)
    assert "listen 0.0.0.0:9443 ssl;" in text
    assert f"ssl_certificate {s.server_cert};" in text
    assert f"ssl_certificate_key {s.server_key};" in text
    assert "client_max_body_size 16m;" in text
    assert "daemon off;" in text
    assert f"pid {s.pid_file};" in text
    for directive in ("error_log", "access_log", "client_body_temp_path", "proxy_temp_path"):
        path = re.search(rf"^\s*{directive} (\S+?)[ ;]", text, re.M)
        assert path is not None, directive
        assert path.group(1).startswith(str(s.prefix)), directive
    assert "server_tokens off;" in text
    assert "user " not in text


def test_user_directive_only_when_asked(tmp_path: Path) -> None:
    assert proxy.render_config(_settings(tmp_path, run_as_user="root")).startswith(
        "# Rendered by cardiofm; regenerated on every `cardiofm coordinator start`.\nuser root;\n"
    )


def test_ipv6_listen_address(tmp_path: Path) -> None:
    assert "listen [::]:9443 ssl;" in proxy.render_config(_settings(tmp_path, listen_host="::"))


@pytest.mark.parametrize("allow", [[], ["all"], ["10.0.0.0/8; allow all"], ["10.0.0.0/8 }"]])
def test_empty_or_injected_allowlist_is_refused(tmp_path: Path, allow: list[str]) -> None:
    with pytest.raises(ConfigError):
        proxy.render_config(_settings(tmp_path, allow=allow))


def test_coordinator_config_feeds_the_proxy(tmp_path: Path) -> None:
    cfg = CoordinatorConfig(work_dir=tmp_path, fleet_port=18443, admin_port=18093, allow=["10.1.2.3", "10.9.0.0/16"])
    s = proxy_settings(cfg)
    assert s.allow == ["10.1.2.3/32", "10.9.0.0/16"]
    text = proxy.render_config(s)
    assert "listen 0.0.0.0:18443 ssl;" in text
    assert "proxy_pass https://127.0.0.1:18093;" in text
    assert str((tmp_path / "pki" / "server.pem").resolve()) in text


def test_invalid_cidr_is_refused_by_the_config_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CIDR"):
        CoordinatorConfig.from_values({"work_dir": tmp_path, "allow": ["10.0.0.0/33"]})


def test_write_config_creates_prefix_folders(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    path = proxy.write_config(s)
    assert path.read_text() == proxy.render_config(s)
    assert (s.prefix / "logs").is_dir()
    assert (s.prefix / "temp").is_dir()
    assert proxy.command(s, nginx="/x/nginx") == [
        "/x/nginx",
        "-p",
        str(s.prefix),
        "-c",
        str(s.config_file),
        "-e",
        str(s.error_log),
    ]
