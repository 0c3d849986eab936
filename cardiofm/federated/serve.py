"""The coordinator as a container's foreground process (``cardiofm coordinator serve``).

A deployment (the ``cardiofm-coordinator`` chart) gives the coordinator three things: a state folder on a
persistent volume (SuperLink database, registered keys, logs), a settings file (:class:`CoordinatorSettings`,
from the chart's values) and a folder of TLS files in Kubernetes' TLS-secret layout (``ca.crt``, ``tls.crt``,
``tls.key``: an existing Secret, or one cert-manager issues). Each start applies the settings, installs the TLS
files where the SuperLink and the proxy read them, starts both (as ``cardiofm coordinator start``), registers
the listed sites and unregisters the others, then stays in the foreground until SIGTERM, or fails (exit 5)
when either process dies, so that Kubernetes restarts the pod.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from pathlib import Path
from types import FrameType

from cardiofm.contracts.coordinator import CONFIG_FILE, CoordinatorConfig, CoordinatorSettings, SiteEntry
from cardiofm.errors import ExternalToolError, MissingResourceError
from cardiofm.federated import pki, superlink
from cardiofm.federated.flwr_cli import FlwrCli

log = logging.getLogger(__name__)

#: Kubernetes TLS secret file names → the coordinator's PKI file names.
TLS_FILES = {"ca.crt": pki.CA_CERT_NAME, "tls.crt": pki.SERVER_CERT_NAME, "tls.key": pki.SERVER_KEY_NAME}


def install_tls(tls_dir: Path, pki_dir: Path) -> None:
    """Copy the TLS secret files into the PKI folder (the key with mode 0600) and check they belong together."""
    missing = [name for name in TLS_FILES if not (tls_dir / name).is_file()]
    if missing:
        raise MissingResourceError(
            f"TLS folder {tls_dir} lacks {', '.join(missing)}: mount a kubernetes.io/tls Secret with ca.crt "
            "(an existing Secret, or a cert-manager Certificate whose issuer sets ca.crt)"
        )
    pki_dir.mkdir(parents=True, exist_ok=True)
    for source, target in TLS_FILES.items():
        dest = pki_dir / target
        dest.unlink(missing_ok=True)
        shutil.copyfile(tls_dir / source, dest)
        os.chmod(dest, 0o600 if target == pki.SERVER_KEY_NAME else 0o644)
    pki.verify_server_certificate(pki.PkiPaths(pki_dir))


def apply_settings(work_dir: Path, settings: CoordinatorSettings) -> tuple[CoordinatorConfig, list[SiteEntry]]:
    """The coordinator config with ``settings`` applied, and the registered sites no longer listed (to remove)."""
    old = CoordinatorConfig.load(work_dir) if (work_dir / CONFIG_FILE).is_file() else None
    kept = {s.name: s for s in (old.sites if old else [])}
    sites = []
    for entry in settings.sites:
        key_file = work_dir / "sites" / entry.name / f"{entry.name}.key.pub"
        key_file.parent.mkdir(parents=True, exist_ok=True)
        text = entry.public_key.strip() + "\n"
        previous = kept.get(entry.name)
        changed = not key_file.is_file() or key_file.read_text() != text
        key_file.write_text(text)
        pki.load_site_public_key(key_file)
        node_id = previous.node_id if previous is not None and not changed else None
        sites.append(SiteEntry(name=entry.name, public_key=key_file, node_id=node_id))
    listed = {s.name: s for s in sites}
    # registered sites no longer listed, or listed with a new key: their old node is unregistered
    removed = [
        s for s in kept.values() if s.node_id is not None and (s.name not in listed or not listed[s.name].node_id)
    ]
    cfg = CoordinatorConfig.from_values(
        {
            "work_dir": work_dir,
            "dns_names": settings.dns_names,
            "ip_addresses": settings.ip_addresses,
            "fleet_host": "0.0.0.0",
            "fleet_port": settings.fleet_port,
            "admin_port": settings.admin_port,
            "allow": settings.allow,
            "sites": sites,
        }
    )
    cfg.save()
    return cfg, removed


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def serve(work_dir: Path, settings: CoordinatorSettings, tls_dir: Path, poll_s: float = 1.0) -> None:
    """Run the coordinator in the foreground (module docstring); returns after SIGTERM/SIGINT."""
    work_dir.mkdir(parents=True, exist_ok=True)
    cfg, removed = apply_settings(work_dir, settings)
    install_tls(tls_dir, cfg.pki_dir)
    superlink.stop(cfg)  # a pod restarted after a crash may have left pid files behind
    stop = _Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        superlink.start(cfg)
        cli = FlwrCli(cfg.flwr_home)
        for site in removed:
            if site.node_id is not None:
                cli.unregister_supernode(site.node_id)
                log.info("unregistered site %s (node %s): no longer in the settings", site.name, site.node_id)
        names = ", ".join(s.name for s in cfg.sites) or "none yet"
        log.warning("coordinator serving on port %d; sites: %s; allowed networks: %s", cfg.fleet_port, names, cfg.allow)
        while not stop.requested:
            for proc in superlink.processes(cfg):
                if proc.pid() is None:
                    raise ExternalToolError(f"the {proc.name} exited; see {proc.log_file}")
            time.sleep(poll_s)
    finally:
        superlink.stop(cfg)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
