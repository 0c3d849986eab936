"""Typed parameters of the federation's coordinator (SuperLink side) and of a site joining a run.

The coordinator keeps its settings in ``<work dir>/coordinator.json`` (:class:`CoordinatorConfig`,
written by ``cardiofm coordinator init`` and ``register-site``); a site's join step is one
:class:`SiteJoinParams`. Stdlib and pydantic only.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cardiofm.contracts.env import ImageProfile, StepParams
from cardiofm.errors import ConfigError, MissingResourceError

CONFIG_FILE = "coordinator.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
_SITE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_M = TypeVar("_M", bound=BaseModel)


def _validated(model: type[_M], values: dict[str, object]) -> _M:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from exc


class SiteEntry(BaseModel):
    """One registered site.

    Attributes
    ----------
    name:
        The site's name (letters, digits, ``._-``); also the SuperNode's name in ``flwr supernode ls``.
    public_key:
        The site's OpenSSH ECDSA P-384 public key, copied into the coordinator's work dir.
    node_id:
        The SuperLink's node id for this key, once registered (``None`` while the SuperLink was down).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_SITE.pattern)
    public_key: Path
    node_id: int | None = None


class CoordinatorConfig(BaseModel):
    """The coordinator's settings (``coordinator.json`` in its work dir).

    Attributes
    ----------
    work_dir:
        Folder holding the PKI, the SuperLink state, logs, pid files and the admin CLI's home.
    dns_names, ip_addresses:
        Public names of the coordinator for the server certificate (``localhost`` and ``127.0.0.1``
        are always added).
    fleet_host, fleet_port:
        Where the allowlisting proxy listens for SuperNodes (the only public port).
    admin_port:
        The SuperLink's own port; it binds ``127.0.0.1`` only, so the Control API is reachable from
        the coordinator host alone.
    allow:
        Source networks (CIDR) allowed to reach ``/v1/fleet/`` and ``/health`` through the proxy.
    sites:
        Registered sites.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    work_dir: Path
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    fleet_host: str = "0.0.0.0"
    fleet_port: int = Field(9443, ge=1, le=65535)
    admin_port: int = Field(9093, ge=1, le=65535)
    allow: list[str] = ["127.0.0.1/32"]
    sites: list[SiteEntry] = []

    @field_validator("allow")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        out = []
        for raw in value:
            try:
                out.append(str(ipaddress.ip_network(raw.strip(), strict=False)))
            except ValueError as exc:
                raise ValueError(f"{raw!r} is not a network in CIDR notation (e.g. 192.0.2.0/24)") from exc
        return out

    @field_validator("ip_addresses")
    @classmethod
    def _ips(cls, value: list[str]) -> list[str]:
        out = []
        for raw in value:
            try:
                out.append(str(ipaddress.ip_address(raw.strip())))
            except ValueError as exc:
                raise ValueError(f"{raw!r} is not an IP address") from exc
        return out

    @field_validator("fleet_host")
    @classmethod
    def _host(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError as exc:
            raise ValueError(f"fleet_host {value!r} must be an IP address to listen on (e.g. 0.0.0.0)") from exc

    # -- paths inside the work dir ------------------------------------------------------------
    @property
    def pki_dir(self) -> Path:
        """CA, server certificate and keys."""
        return self.work_dir / "pki"

    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` of every Flower process and the admin CLI (holds ``config.toml``)."""
        return self.work_dir / "flwr-home"

    @property
    def state_db(self) -> Path:
        """The SuperLink's SQLite state: runs and registered nodes survive a restart."""
        return self.work_dir / "state.db"

    @property
    def run_dir(self) -> Path:
        """Folder of the pid files."""
        return self.work_dir / "run"

    @property
    def log_dir(self) -> Path:
        """Process logs."""
        return self.work_dir / "logs"

    @property
    def sites_dir(self) -> Path:
        """Registered public keys (and generated site bundles, to hand over out of band)."""
        return self.work_dir / "sites"

    @property
    def config_file(self) -> Path:
        """Path of ``coordinator.json``."""
        return self.work_dir / CONFIG_FILE

    def site(self, name: str) -> SiteEntry | None:
        """The registered site called ``name``, if any."""
        return next((s for s in self.sites if s.name == name), None)

    def save(self) -> None:
        """Write ``coordinator.json`` (atomically)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_file.with_suffix(".json.tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        tmp.replace(self.config_file)

    @classmethod
    def from_values(cls, values: dict[str, object]) -> Self:
        """Validate settings from the command line.

        Raises
        ------
        ConfigError
            Naming the first invalid setting and why.
        """
        return _validated(cls, values)

    @classmethod
    def load(cls, work_dir: Path) -> Self:
        """Read ``<work_dir>/coordinator.json``.

        Raises
        ------
        MissingResourceError
            If the work dir was never initialised.
        ConfigError
            If the file is invalid.
        """
        path = work_dir / CONFIG_FILE
        if not path.is_file():
            raise MissingResourceError(
                f"{path} not found: initialise the coordinator with `cardiofm coordinator init --dir {work_dir}`"
            )
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from exc


class SiteJoinParams(StepParams):
    """What a site needs to join a federated run with its SuperNode.

    Attributes
    ----------
    superlink:
        ``host:port`` of the coordinator's proxy.
    ca_cert:
        The federation CA certificate (from the coordinator's site bundle).
    private_key:
        The site's OpenSSH ECDSA P-384 private key (mode 0600).
    dataset:
        The site dataset folder (``manifest.json`` + ``cases/``), passed to the ClientApp as
        ``node_config["dataset"]``; read-only.
    work_dir:
        The site's work folder: SuperNode log, Flower home, and the ClientApp's ``node_config["work-dir"]``
        (received models, pseudo-labels, the run's done marker).
    pinned_fab_sha256:
        SHA-256 of every app bundle (FAB) the site agreed to run; any other bundle is refused.
    timeout_s:
        Give up (distinct exit code) if the run has not finished by then.
    grace_s:
        Wait after the done marker before stopping the SuperNode, so its last reply is delivered. It must
        outlast the ServerApp's reply poll (0.5 s for cardiofm's, 3 s for Flower's stock grid): the
        SuperLink replaces the reply of a node that went offline before the reply was pulled with
        "Node Unavailable".
    runtime_port:
        The SuperNode's own Runtime API port on 127.0.0.1 (one per SuperNode on a host).
    node_config:
        Extra site facts for ``context.node_config`` (kebab-case keys; str, int, float or bool).
    insecure_dev:
        Plain HTTP and no node key: loopback development only.
    """

    step: ClassVar[str] = "site-join"
    image: ClassVar[ImageProfile] = "trainer"
    batch: ClassVar[bool] = False

    superlink: str
    ca_cert: Path | None = None
    private_key: Path | None = None
    dataset: Path
    work_dir: Path
    pinned_fab_sha256: list[str] = Field(min_length=1)
    timeout_s: float = Field(12 * 3600.0, gt=0)
    grace_s: float = Field(8.0, ge=0)
    runtime_port: int = Field(9094, ge=1, le=65535)
    node_config: dict[str, str | int | float | bool] = Field(default_factory=dict)
    insecure_dev: bool = False

    @field_validator("superlink")
    @classmethod
    def _address(cls, value: str) -> str:
        match = _HOST_PORT.match(value.strip())
        if not match or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"superlink {value!r} must be host:port (e.g. superlink.example.org:9443)")
        return value.strip()

    @field_validator("pinned_fab_sha256", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        # an install dialog or a form gives one hash as text, several separated by commas or spaces
        if isinstance(value, str):
            return [part for part in value.replace(",", " ").split() if part]
        return value

    @field_validator("pinned_fab_sha256")
    @classmethod
    def _hashes(cls, value: list[str]) -> list[str]:
        out = []
        for raw in value:
            digest = raw.strip().lower()
            if not _SHA256.match(digest):
                raise ValueError(f"{raw!r} is not a SHA-256 hex digest (64 hex characters, as `flwr build` prints)")
            out.append(digest)
        return out

    @classmethod
    def from_values(cls, values: dict[str, object]) -> Self:
        """Validate join settings from the command line or a task's environment.

        Raises
        ------
        ConfigError
            Naming the first invalid setting and why.
        """
        return _validated(cls, values)

    def check(self) -> None:
        """Cross-field checks with actionable messages.

        Raises
        ------
        ConfigError
            TLS material missing without ``insecure_dev``.
        MissingResourceError
            The dataset folder or a key/certificate file is absent.
        """
        if not self.insecure_dev and (self.ca_cert is None or self.private_key is None):
            raise ConfigError(
                "joining needs --ca (federation CA certificate) and --key (site private key) from the site bundle; "
                "plain HTTP only with the explicit --insecure-dev flag"
            )
        if not self.dataset.is_dir():
            raise MissingResourceError(f"dataset folder {self.dataset} not found: build it with `cardiofm prepare`")
        for path in (self.ca_cert, self.private_key):
            if path is not None and not path.is_file():
                raise MissingResourceError(f"{path} not found: it comes in the site bundle from the coordinator")


class SitePseudolabelParams(StepParams):
    """The site's local step between the teacher stages and ``distill`` (``cardiofm site pseudolabel``).

    Attributes
    ----------
    dataset:
        The site dataset folder (``manifest.json`` + ``cases/``); every case is pseudo-labelled.
    work_dir:
        The work folder the site joined the teacher stages with (``cardiofm site join --work-dir``):
        its ``models/`` holds the received teachers, and the pseudo-labels go to its ``pseudo-labels/``,
        where the site's ``distill`` stage reads them.
    teachers_dir:
        Folder of teacher checkpoints named ``teacher-<task>.pt``; None: ``<work_dir>/models``.
    tasks:
        Only these tasks' teachers; empty: every teacher found.
    """

    step: ClassVar[str] = "site-pseudolabel"
    image: ClassVar[ImageProfile] = "trainer"
    batch: ClassVar[bool] = False

    dataset: Path
    work_dir: Path
    teachers_dir: Path | None = None
    tasks: tuple[str, ...] = ()

    @classmethod
    def from_values(cls, values: dict[str, object]) -> Self:
        """Validate the settings from the command line or a task's environment (ConfigError naming the field)."""
        return _validated(cls, values)

    def check(self) -> None:
        """The dataset must exist (MissingResourceError saying how to make it)."""
        if not (self.dataset / "manifest.json").is_file():
            raise MissingResourceError(
                f"site dataset {self.dataset} has no manifest.json: build it with `cardiofm prepare`"
            )


class SiteKeySetting(BaseModel):
    """A site in a deployment's settings: its name and its OpenSSH ECDSA P-384 public key (the text)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_SITE.pattern)
    public_key: str = Field(min_length=20)


class CoordinatorSettings(BaseModel):
    """A deployed coordinator's settings (``cardiofm coordinator serve --settings``; the chart's values).

    Applied on every start: the proxy allowlist, ports and names are these; sites listed here are registered
    and sites no longer listed are unregistered. The TLS material comes from a folder of Kubernetes TLS
    secret files (``ca.crt``, ``tls.crt``, ``tls.key``), from an existing Secret or cert-manager.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dns_names: list[str] = Field(default_factory=list)
    ip_addresses: list[str] = Field(default_factory=list)
    fleet_port: int = Field(9443, ge=1, le=65535)
    admin_port: int = Field(9093, ge=1, le=65535)
    allow: list[str] = Field(min_length=1)
    sites: list[SiteKeySetting] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read a YAML or JSON settings file (ConfigError naming the first invalid setting)."""
        import yaml

        if not path.is_file():
            raise MissingResourceError(f"coordinator settings {path} not found")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: must be a mapping of settings")
        return _validated(cls, values)
