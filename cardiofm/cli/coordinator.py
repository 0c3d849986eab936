"""``cardiofm coordinator``: the central side of the federation (CA, site registry, SuperLink, runs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

app = typer.Typer(
    help="Run the federation's coordinator: certificates, site keys, SuperLink + allowlisting proxy, runs.",
    no_args_is_help=True,
)

DIR_HELP = "Coordinator work dir (certificates, state, logs)."


@app.command("init")
def init(
    work_dir: Path = typer.Option(..., "--dir", help=DIR_HELP),
    name: list[str] = typer.Option([], "--name", help="Public DNS name of the coordinator (repeatable)."),
    ip: list[str] = typer.Option([], "--ip", help="Public IP address of the coordinator (repeatable)."),
    fleet_host: str = typer.Option("0.0.0.0", "--fleet-host", help="Address the proxy listens on."),
    fleet_port: int = typer.Option(9443, "--fleet-port", help="Public port of the proxy (the only one sites reach)."),
    admin_port: int = typer.Option(9093, "--admin-port", help="SuperLink port on 127.0.0.1 (admin only)."),
    allow: list[str] = typer.Option([], "--allow", help="Site network allowed through the proxy, CIDR (repeatable)."),
    renew: bool = typer.Option(False, "--renew", help="Reissue the server certificate from the existing CA."),
) -> None:
    """Create the CA and the server certificate (SANs: the names/IPs given plus localhost, 127.0.0.1)."""
    from cardiofm.contracts.coordinator import CONFIG_FILE, CoordinatorConfig
    from cardiofm.errors import ConfigError
    from cardiofm.federated import pki

    work_dir = work_dir.resolve()
    exists = (work_dir / CONFIG_FILE).is_file()
    if exists and not renew:
        raise ConfigError(f"{work_dir} is already initialised; pass --renew to reissue the server certificate")
    if exists:
        old = CoordinatorConfig.load(work_dir)
        cfg = CoordinatorConfig.from_values(
            {**old.model_dump(), "dns_names": name or old.dns_names, "ip_addresses": ip or old.ip_addresses}
        )
    else:
        values: dict[str, object] = {
            "work_dir": work_dir,
            "dns_names": name,
            "ip_addresses": ip,
            "fleet_host": fleet_host,
            "fleet_port": fleet_port,
            "admin_port": admin_port,
        }
        if allow:
            values["allow"] = allow
        cfg = CoordinatorConfig.from_values(values)
    paths = pki.PkiPaths(cfg.pki_dir)
    if not exists:
        pki.create_ca(paths.folder)
    pki.create_server_certificate(paths, cfg.dns_names, cfg.ip_addresses)
    cfg.save()
    dns, ips = pki.server_sans(paths.server_cert)
    typer.echo(f"CA: {paths.ca_cert} (hand this to every site)")
    typer.echo(f"server certificate: {paths.server_cert} (SAN DNS {', '.join(dns)}; IP {', '.join(ips)})")
    typer.echo(f"config: {cfg.config_file}")


@app.command("register-site")
def register_site(
    work_dir: Path = typer.Option(..., "--dir", help=DIR_HELP),
    name: str = typer.Option(..., "--name", help="Site name (letters, digits, '._-')."),
    public_key: Path | None = typer.Option(
        None, "--public-key", help="The site's OpenSSH ECDSA P-384 public key; omitted: generate a key pair."
    ),
) -> None:
    """Register a site's node key (generating a key pair into a site bundle to hand over out of band)."""
    from cardiofm.contracts.coordinator import CoordinatorConfig, SiteEntry
    from cardiofm.errors import ConfigError
    from cardiofm.federated import pki, superlink
    from cardiofm.federated.flwr_cli import FlwrCli

    cfg = CoordinatorConfig.load(work_dir.resolve())
    if not pki.site_name_ok(name):
        raise ConfigError(f"site name {name!r} must be letters, digits, '.', '_' or '-' (at most 63 characters)")
    if cfg.site(name) is not None:
        raise ConfigError(f"site {name!r} is already registered in {cfg.config_file}")
    site_dir = cfg.sites_dir / name
    if public_key is None:
        bundle = site_dir / "bundle"
        pair = pki.create_site_keypair(bundle, name)
        shutil.copy2(pki.PkiPaths(cfg.pki_dir).ca_cert, bundle / pki.CA_CERT_NAME)
        public_key = pair.public_key
        typer.echo(f"site bundle for {name}: {bundle} (private key, public key, CA certificate)")
        typer.echo("hand it to the site over a trusted channel, then delete the private key here")
    pki.load_site_public_key(public_key)
    site_dir.mkdir(parents=True, exist_ok=True)
    stored = site_dir / f"{name}.key.pub"
    if public_key.resolve() != stored.resolve():
        shutil.copyfile(public_key, stored)
    node_id = None
    if superlink.status(cfg).running:
        node_id = FlwrCli(cfg.flwr_home).register_supernode(stored, name)
    updated = cfg.model_copy(update={"sites": [*cfg.sites, SiteEntry(name=name, public_key=stored, node_id=node_id)]})
    updated.save()
    if node_id is None:
        typer.echo(
            f"site {name} recorded; it is registered with the SuperLink on the next `cardiofm coordinator start`"
        )
    else:
        typer.echo(f"site {name} registered as SuperNode {node_id}")


@app.command("remove-site")
def remove_site(
    work_dir: Path = typer.Option(..., "--dir", help=DIR_HELP),
    name: str = typer.Option(..., "--name", help="Registered site name."),
) -> None:
    """Unregister a site's key (the SuperLink must be running if the site was registered with it)."""
    from cardiofm.contracts.coordinator import CoordinatorConfig
    from cardiofm.errors import ConfigError
    from cardiofm.federated import superlink
    from cardiofm.federated.flwr_cli import FlwrCli

    cfg = CoordinatorConfig.load(work_dir.resolve())
    site = cfg.site(name)
    if site is None:
        raise ConfigError(f"no site {name!r} in {cfg.config_file}; registered: {[s.name for s in cfg.sites]}")
    if site.node_id is not None:
        if not superlink.status(cfg).running:
            raise ConfigError(
                f"site {name} is registered with the SuperLink as node {site.node_id}: start the coordinator first "
                "so its key can be revoked"
            )
        FlwrCli(cfg.flwr_home).unregister_supernode(site.node_id)
    cfg.model_copy(update={"sites": [s for s in cfg.sites if s.name != name]}).save()
    typer.echo(f"site {name} removed; its key is refused from now on")


@app.command("start")
def start(
    work_dir: Path = typer.Option(..., "--dir", help=DIR_HELP),
    allow: list[str] = typer.Option([], "--allow", help="Replace the proxy allowlist with these CIDRs (repeatable)."),
    insecure_dev: bool = typer.Option(
        False, "--insecure-dev", help="DEVELOPMENT ONLY: plain HTTP, no node auth, no proxy, loopback."
    ),
) -> None:
    """Start the SuperLink (127.0.0.1, TLS, node auth) and the allowlisting proxy; returns when both answer."""
    from cardiofm.contracts.coordinator import CoordinatorConfig
    from cardiofm.federated import superlink

    cfg = CoordinatorConfig.load(work_dir.resolve())
    if allow:
        cfg = CoordinatorConfig.from_values({**cfg.model_dump(), "allow": allow})
        cfg.save()
    superlink.start(cfg, insecure_dev=insecure_dev)
    if insecure_dev:
        typer.echo(f"SuperLink (plain HTTP) on 127.0.0.1:{cfg.admin_port}")
    else:
        typer.echo(f"SuperLink on 127.0.0.1:{cfg.admin_port} (admin only); proxy on {cfg.fleet_host}:{cfg.fleet_port}")
        typer.echo(f"allowed site networks: {', '.join(cfg.allow)}")


@app.command("serve")
def serve(
    work_dir: Path = typer.Option(Path("/state"), "--dir", help="State folder (a persistent volume in a cluster)."),
    settings: Path = typer.Option(
        Path("/etc/cardiofm/coordinator.yaml"), "--settings", help="Settings file: names, ports, allowlist, sites."
    ),
    tls_dir: Path = typer.Option(
        Path("/etc/cardiofm/tls"), "--tls-dir", help="TLS secret files: ca.crt, tls.crt, tls.key."
    ),
) -> None:
    """Run the coordinator in the foreground (a container's command) until SIGTERM; exit 5 if a process dies."""
    import logging

    from cardiofm.contracts.coordinator import CoordinatorSettings
    from cardiofm.federated.serve import serve as run_serve

    logging.getLogger("cardiofm").setLevel(logging.INFO)
    run_serve(work_dir.resolve(), CoordinatorSettings.load(settings), tls_dir)
    typer.echo("coordinator stopped")


@app.command("run")
def run(
    work_dir: Path = typer.Option(..., "--dir", help=DIR_HELP),
    app_dir: Path = typer.Option(..., "--app", help="Flower app folder (its name: letters, digits, '-')."),
    stage: str = typer.Option(..., "--stage", help="Federated stage, passed as run-config key 'stage'."),
    run_config: list[str] = typer.Option([], "--run-config", help="Run-config override key=value (repeatable)."),
    timeout_s: float = typer.Option(24 * 3600.0, "--timeout-s", help="Stop the run and fail after this long."),
    poll_s: float = typer.Option(5.0, "--poll-s", help="Status poll interval."),
) -> None:
    """Launch a run, wait for it and exit non-zero unless its real status is finished:completed."""
    from cardiofm.contracts.coordinator import CoordinatorConfig
    from cardiofm.errors import ConfigError
    from cardiofm.federated import superlink
    from cardiofm.federated.flwr_cli import FlwrCli, fab_sha256, parse_assignments

    cfg = CoordinatorConfig.load(work_dir.resolve())
    if not superlink.status(cfg).running:
        raise ConfigError(f"the SuperLink is not running: start it with `cardiofm coordinator start --dir {work_dir}`")
    values = parse_assignments(run_config)
    if "stage" in values:
        raise ConfigError("set the stage with --stage, not --run-config stage=...")
    values = {"stage": stage, **values}
    digest = fab_sha256(app_dir, cfg.flwr_home)
    typer.echo(f"app bundle sha256 {digest} (sites must pin exactly this value)")
    cli = FlwrCli(cfg.flwr_home)
    run_id = cli.start_run(app_dir.resolve(), values)
    typer.echo(f"run {run_id} submitted; waiting for it to finish")
    info = cli.wait_for_run(run_id, timeout_s=timeout_s, poll_s=poll_s)
    if info.get("fab-hash") and info["fab-hash"] != digest:
        typer.secho(f"warning: the SuperLink reports bundle {info['fab-hash']}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"run {run_id}: {info['status']}")


@app.command("status")
def status(work_dir: Path = typer.Option(..., "--dir", help=DIR_HELP)) -> None:
    """Show the SuperLink and proxy processes and the registered sites (online or not)."""
    from cardiofm.contracts.coordinator import CoordinatorConfig
    from cardiofm.errors import ExternalToolError
    from cardiofm.federated import superlink
    from cardiofm.federated.flwr_cli import FlwrCli

    cfg = CoordinatorConfig.load(work_dir.resolve())
    st = superlink.status(cfg)
    typer.echo(f"superlink: {'running, pid ' + str(st.superlink_pid) if st.superlink_pid else 'stopped'}")
    typer.echo(f"  healthy: {st.superlink_healthy}")
    typer.echo(f"proxy: {'running, pid ' + str(st.proxy_pid) if st.proxy_pid else 'stopped'}")
    nodes: dict[int, str] = {}
    if st.running:
        try:
            nodes = {int(n["node-id"]): str(n.get("status", "?")) for n in FlwrCli(cfg.flwr_home).list_supernodes()}
        except ExternalToolError as exc:
            typer.echo(f"  could not list SuperNodes: {exc}")
    for site in cfg.sites:
        state = nodes.get(site.node_id, "unknown") if site.node_id is not None else "not yet registered"
        typer.echo(f"site {site.name}: node {site.node_id} {state}")
    if not st.running:
        raise typer.Exit(code=1)


@app.command("stop")
def stop(work_dir: Path = typer.Option(..., "--dir", help=DIR_HELP)) -> None:
    """Stop the proxy and the SuperLink (state is kept in state.db for the next start)."""
    from cardiofm.contracts.coordinator import CoordinatorConfig
    from cardiofm.federated import superlink

    cfg = CoordinatorConfig.load(work_dir.resolve())
    stopped = superlink.stop(cfg)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
