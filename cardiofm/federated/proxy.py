"""The allowlisting reverse proxy (nginx) in front of the SuperLink.

The SuperLink serves every API on one port, and its Control API (``flwr run``: code every hospital
executes) has no authentication in the open-source release. The SuperLink therefore binds
``127.0.0.1`` and this proxy is the only public entry: it terminates TLS with the federation's
server certificate, passes **only** ``/v1/fleet/`` and ``= /health`` and only from the allowlisted
source networks, and answers 403 to everything else (Control and Runtime APIs, ``/docs``,
``/openapi.json``). Upstream it re-encrypts and verifies the SuperLink's certificate as
``localhost`` (nginx checks DNS names, not IP SANs). ``client_max_body_size`` is 16m because
SuperNodes push 5 MiB chunks; nginx's default 1m would make every model upload fail with 413.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cardiofm.errors import ConfigError, ExternalToolError, MissingResourceError

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx")
BODY_LIMIT = "16m"
PROXY_TIMEOUT_S = 600
UPSTREAM_NAME = "localhost"


@dataclass(frozen=True)
class ProxySettings:
    """Everything the proxy config depends on.

    Attributes
    ----------
    prefix:
        nginx's own folder (config, pid file, logs, temp folders); created by :func:`write_config`.
    listen_host, listen_port:
        Public address of the proxy.
    upstream_port:
        The SuperLink's port on 127.0.0.1.
    server_cert, server_key, ca_cert:
        TLS material: the proxy presents the server certificate and verifies the SuperLink with the CA.
    allow:
        Source networks (CIDR) allowed to reach the Fleet API and ``/health``.
    run_as_user:
        ``user`` directive; only meaningful when nginx starts as root (workers drop to it).
    """

    prefix: Path
    listen_host: str
    listen_port: int
    upstream_port: int
    server_cert: Path
    server_key: Path
    ca_cert: Path
    allow: list[str] = field(default_factory=list)
    run_as_user: str | None = None

    @property
    def config_file(self) -> Path:
        """The rendered ``nginx.conf``."""
        return self.prefix / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        """Pid file of the nginx master process."""
        return self.prefix / "nginx.pid"

    @property
    def error_log(self) -> Path:
        """Error log of nginx."""
        return self.prefix / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        """Access log: client address, path, status (audit trail of who called what)."""
        return self.prefix / "logs" / "access.log"


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_config(s: ProxySettings) -> str:
    """The nginx configuration text for ``s``.

    Raises
    ------
    ConfigError
        If the allowlist is empty (the proxy would refuse every site) or holds ``all``.
    """
    if not s.allow:
        raise ConfigError("the proxy allowlist is empty: pass the sites' networks with --allow CIDR")
    for cidr in s.allow:
        if not cidr or any(c in cidr for c in " ;{}\n\"'") or cidr.strip() == "all":
            raise ConfigError(f"allowlist entry {cidr!r} must be one CIDR network, not {cidr!r}")
    allow = "\n".join(f"            allow {cidr};" for cidr in s.allow)
    temp = s.prefix / "temp"
    user = f"user {s.run_as_user};\n" if s.run_as_user else ""
    upstream = f"https://127.0.0.1:{s.upstream_port}"
    proxied = f"""            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_read_timeout {PROXY_TIMEOUT_S}s;
            proxy_send_timeout {PROXY_TIMEOUT_S}s;
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_trusted_certificate {s.ca_cert};
            proxy_ssl_name {UPSTREAM_NAME};
            proxy_ssl_server_name on;"""
    return f"""# Rendered by cardiofm; regenerated on every `cardiofm coordinator start`.
{user}worker_processes 1;
pid {s.pid_file};
error_log {s.error_log} warn;
daemon off;

events {{
    worker_connections 1024;
}}

http {{
    access_log {s.access_log};
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server_tokens off;
    client_max_body_size {BODY_LIMIT};

    server {{
        listen {_listen(s.listen_host, s.listen_port)} ssl;
        ssl_certificate {s.server_cert};
        ssl_certificate_key {s.server_key};
        ssl_protocols TLSv1.2 TLSv1.3;

        # SuperNodes only: the Fleet API and the health probe, from allowlisted networks.
        location /v1/fleet/ {{
{allow}
            deny all;
{proxied}
        }}

        location = /health {{
{allow}
            deny all;
{proxied}
        }}

        # Control API (run, stop, register nodes), Runtime API, /docs, /openapi.json: never public.
        location / {{
            return 403;
        }}
    }}
}}
"""


def current_user_if_root() -> str | None:
    """The current user's name when running as root (nginx workers then need a ``user``), else ``None``."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwuid(os.geteuid()).pw_name


def find_nginx() -> str:
    """Path of the nginx binary.

    Raises
    ------
    MissingResourceError
        If nginx is not installed.
    """
    for candidate in NGINX_CANDIDATES:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise MissingResourceError("nginx is not installed: install the Debian package nginx (see `make deps`)")


def write_config(s: ProxySettings) -> Path:
    """Create the prefix folders and write ``nginx.conf``; returns its path."""
    for sub in ("logs", "temp"):
        (s.prefix / sub).mkdir(parents=True, exist_ok=True)
    s.config_file.write_text(render_config(s))
    return s.config_file


def command(s: ProxySettings, nginx: str | None = None) -> list[str]:
    """The nginx command line (foreground, own prefix, own config, own startup error log)."""
    exe = nginx or find_nginx()
    return [exe, "-p", str(s.prefix), "-c", str(s.config_file), "-e", str(s.error_log)]


def check_config(s: ProxySettings, nginx: str | None = None) -> None:
    """Let nginx check the written config (``nginx -t``).

    Raises
    ------
    ExternalToolError
        With nginx's complaint if the config is invalid (e.g. unreadable certificate).
    """
    proc = subprocess.run([*command(s, nginx), "-t", "-q"], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise ExternalToolError(
            f"nginx rejected {s.config_file}; check the certificate paths", log_tail=proc.stderr[-2000:]
        )
