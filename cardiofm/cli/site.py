"""``cardiofm site``: the hospital side of the federation (join a run with this site's SuperNode)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Take part in a federated run from this site, and the site's local step between its stages.",
    no_args_is_help=True,
)


@app.command("join")
def join(
    superlink: str = typer.Option(..., "--superlink", help="host:port of the coordinator's proxy."),
    ca: Path | None = typer.Option(None, "--ca", help="Federation CA certificate (from the site bundle)."),
    key: Path | None = typer.Option(None, "--key", help="This site's private key (from the site bundle, mode 0600)."),
    data: Path = typer.Option(..., "--data", help="Site dataset folder written by `cardiofm prepare` (read only)."),
    pin_fab: list[str] = typer.Option(
        ..., "--pin-fab", help="SHA-256 of an approved app bundle (repeatable); any other bundle is refused."
    ),
    work_dir: Path = typer.Option(Path("supernode"), "--work-dir", help="Where the SuperNode's log and run marker go."),
    timeout_s: float = typer.Option(12 * 3600.0, "--timeout-s", help="Fail (exit 8) if the run has not ended by then."),
    grace_s: float = typer.Option(
        8.0,
        "--grace-s",
        help="Seconds to keep the SuperNode up after the run ended, so its last reply is pulled before it leaves.",
    ),
    runtime_port: int = typer.Option(9094, "--runtime-port", help="SuperNode Runtime API port on 127.0.0.1."),
    node_config: list[str] = typer.Option([], "--node-config", help="Extra site fact key=value (repeatable)."),
    insecure_dev: bool = typer.Option(
        False, "--insecure-dev", help="DEVELOPMENT ONLY: plain HTTP and no site key (loopback demos)."
    ),
) -> None:
    """Run this site's SuperNode until the federated run ends (exit 0), fails, or times out.

    Exit codes: 0 run finished; 5 SuperNode refused or died (TLS, key, allowlist); 7 app bundle not
    pinned (nothing of it ran); 8 timeout; 2/6 invalid or missing inputs.
    """
    from cardiofm.contracts.coordinator import SiteJoinParams
    from cardiofm.federated.flwr_cli import parse_assignments
    from cardiofm.federated.supernode import join as run_join

    params = SiteJoinParams.from_values(
        {
            "superlink": superlink,
            "ca_cert": ca,
            "private_key": key,
            "dataset": data,
            "work_dir": work_dir.resolve(),
            "pinned_fab_sha256": pin_fab,
            "timeout_s": timeout_s,
            "grace_s": grace_s,
            "runtime_port": runtime_port,
            "node_config": parse_assignments(node_config),
            "insecure_dev": insecure_dev,
        }
    )
    result = run_join(params)
    typer.echo(f"run {result.run_id} finished after {result.seconds:.0f} s (SuperNode log: {result.log_file})")


@app.command("pseudolabel")
def pseudolabel(
    data: Path = typer.Option(..., "--data", help="Site dataset folder written by `cardiofm prepare` (read only)."),
    work_dir: Path = typer.Option(
        Path("supernode"), "--work-dir", help="The --work-dir this site joined the teacher stages with."
    ),
    teachers: Path | None = typer.Option(
        None, "--teachers", help="Folder of teacher-<task>.pt checkpoints (default: WORK_DIR/models, as received)."
    ),
    task: list[str] = typer.Option([], "--task", help="Only this task's teacher (repeatable; default: every one)."),
) -> None:
    """Pseudo-label every case of the site with the federated teachers, for the site's distill stage.

    Writes WORK_DIR/pseudo-labels/<task>/ and teachers.json, exactly where `cardiofm site join` with the
    same --work-dir makes the distill stage read them. Exit codes: 0 done; 6 no teacher or no dataset;
    2 invalid settings.
    """
    from rich.console import Console
    from rich.table import Table

    from cardiofm.cli.train import progress_bar
    from cardiofm.contracts.coordinator import SitePseudolabelParams
    from cardiofm.contracts.federated_run import SiteNodeConfig
    from cardiofm.federated.task import PSEUDO_DIR, pseudolabel_site
    from cardiofm.training.data import load_manifest

    params = SitePseudolabelParams.from_values(
        {"dataset": data, "work_dir": work_dir.resolve(), "teachers_dir": teachers, "tasks": tuple(task)}
    )
    params.check()
    n = len(load_manifest(params.dataset).cases)
    site = SiteNodeConfig(dataset=params.dataset, work_dir=params.work_dir)
    with progress_bar() as bar:
        job = bar.add_task("pseudo-labelling", total=None)
        written = pseudolabel_site(site, params.tasks or None, params.teachers_dir, on_case=lambda _c: bar.advance(job))
    table = Table(title=f"pseudo-labels of {n} case(s) in {params.work_dir / PSEUDO_DIR}")
    table.add_column("task")
    table.add_column("cases", justify="right")
    for name, count in written.items():
        table.add_row(name, str(count))
    Console().print(table)
