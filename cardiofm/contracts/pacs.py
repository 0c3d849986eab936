"""Where a site's studies come from: its local PACS folder, a DICOMweb server or a DIMSE node.

One model read by ``cardiofm prepare`` (from its options) and by the ``stage-studies`` step (from the
environment a Kaapana form or the operator writes): the field ``dicomweb_url`` is the option
``--dicomweb-url`` and the variable ``DICOMWEB_URL``. The password is never a field: ``pacs_password_env``
names the environment variable (a Kubernetes secret in a cluster) that holds it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cardiofm.errors import ConfigError

_AE = r"^[ -~]{1,16}$"


class PacsParams(BaseModel):
    """The PACS to read from; all empty: the site's local PACS folder (``pacs.path`` in ``site.yaml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dicomweb_url: str | None = None
    pacs_user: str | None = None
    pacs_password_env: str = Field(default="CARDIOFM_PACS_PASSWORD", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: ``HOST:PORT`` of a DIMSE node (C-FIND, then C-GET or C-MOVE).
    dimse: str | None = None
    dimse_mode: str = "c-get"
    called_ae: str = Field(default="ORTHANC", pattern=_AE)
    calling_ae: str = Field(default="CARDIOFM", pattern=_AE)
    move_ae: str | None = Field(default=None, pattern=_AE)
    move_port: int | None = Field(default=None, ge=1, le=65535)
    listen_address: str = "0.0.0.0"

    @property
    def kind(self) -> Literal["folder", "dicomweb", "dimse"]:
        """Which source these settings name."""
        return "dicomweb" if self.dicomweb_url else "dimse" if self.dimse else "folder"

    def check(self) -> None:
        """Raise ConfigError for contradictory settings, naming the option (``--x``) and its variable (``X``)."""
        if self.dicomweb_url and self.dimse:
            raise ConfigError(
                "give either --dicomweb-url (DICOMWEB_URL) or --dimse (DIMSE), not both: a site reads one PACS"
            )
        if self.pacs_user and not self.dicomweb_url:
            raise ConfigError("--pacs-user (PACS_USER) applies to --dicomweb-url only")
        if self.dimse:
            host, _, port = self.dimse.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"--dimse {self.dimse!r} must be HOST:PORT, e.g. pacs.hospital.local:11112")
            if self.dimse_mode not in ("c-get", "c-move"):
                raise ConfigError(f"--dimse-mode {self.dimse_mode!r} (DIMSE_MODE) must be c-get or c-move")
            if self.dimse_mode == "c-move" and self.move_port is None:
                raise ConfigError(
                    "--dimse-mode c-move needs --move-port (MOVE_PORT): the local port the PACS sends the instances "
                    "to (register --move-ae with this host and port at the PACS)"
                )
        elif self.move_port is not None or self.move_ae is not None:
            raise ConfigError(
                "--move-ae and --move-port (MOVE_AE, MOVE_PORT) apply to --dimse --dimse-mode c-move only"
            )

    @property
    def dimse_host_port(self) -> tuple[str, int]:
        """``dimse`` split into host and port (after :meth:`check`)."""
        host, _, port = (self.dimse or "").rpartition(":")
        return host, int(port)
