"""A whole federation on one machine: coordinator and hospital SuperNodes on loopback, for demos and tests.

Everything runs as real processes with the production protections, only on ``127.0.0.1``:

* :func:`start_coordinator` creates the federation's CA and server certificate, one node key per site
  (registered with the SuperLink), and starts the SuperLink (TLS, SuperNode authentication) behind the
  allowlisting proxy, which exposes only the Fleet API to ``127.0.0.1/32``;
* :func:`run_stage` runs one federated stage: every taking-part site joins with ``cardiofm site join``
  (its own SuperNode, pinned to the app bundle's SHA-256, ending with the run), the run is submitted
  through the Control API, and its **real** status is polled (``flwr run`` exits 0 even when a run
  fails); a failed run, a site that dies, or a timeout raises;
* :func:`stop_coordinator` stops the proxy and the SuperLink;
* :func:`loopback_federation` wraps start and stop as a context manager: every process it started is
  stopped on every way out (errors, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cardiofm import __version__
from cardiofm.constants import TASKS
from cardiofm.contracts.coordinator import CoordinatorConfig, SiteEntry
from cardiofm.contracts.federated_run import TEACHER_PREFIX, FederatedRunConfig
from cardiofm.errors import ConfigError, ExternalToolError, FederationTimeoutError
from cardiofm.federated import pki, superlink
from cardiofm.federated.fab import write_app_dir
from cardiofm.federated.flwr_cli import STATUS_COMPLETED, FlwrCli, fab_sha256, venv_bin
from cardiofm.federated.progress import ProgressTail, read_progress
from cardiofm.federated.supernode import exit_on_signals
from cardiofm.pipeline.dag_runner import LocalAirflow

log = logging.getLogger(__name__)

LOOPBACK: Final[str] = "127.0.0.1"
#: Seconds between two status polls of a running run (each poll starts a ``flwr`` process, which costs
#: CPU the sites need); the site tasks are watched every second meanwhile.
STATUS_POLL_S: Final[float] = 15.0
#: Seconds between status polls once every site task has ended (the run is about to be finished).
POLL_S: Final[float] = 2.0
#: Seconds a site keeps its SuperNode up after the run ended, so its last reply is delivered.
GRACE_S: Final[float] = 3.0
#: Seconds to wait for the site tasks to end once the run has finished.
JOIN_EXIT_TIMEOUT_S: Final[float] = 90.0
_STOP_TIMEOUT_S: Final[float] = 20.0


@dataclass(frozen=True)
class LoopbackSite:
    """One hospital of the loopback federation.

    Attributes
    ----------
    name
        Site name (also its registered node-key name).
    dataset
        Its prepared dataset folder (read only).
    work_dir
        Site-local folder: received global models, pseudo-labels, SuperNode logs.
    private_key
        Its node-authentication private key (from its site bundle).
    """

    name: str
    dataset: Path
    work_dir: Path
    private_key: Path


@dataclass(frozen=True)
class LoopbackFederation:
    """A started coordinator and its sites."""

    cfg: CoordinatorConfig
    app_dir: Path
    #: SHA-256 of the app bundle every site pins.
    fab_sha256: str
    sites: tuple[LoopbackSite, ...]

    @property
    def ca_cert(self) -> Path:
        """The federation CA certificate (in every site bundle)."""
        return pki.PkiPaths(self.cfg.pki_dir).ca_cert

    @property
    def fleet_address(self) -> str:
        """``host:port`` of the proxy, the only address sites reach."""
        return f"{LOOPBACK}:{self.cfg.fleet_port}"

    @property
    def runs_dir(self) -> Path:
        """Coordinator-side folder of every run's checkpoints and summary."""
        return self.cfg.work_dir / "runs"

    def site(self, name: str) -> LoopbackSite:
        """The site called ``name``.

        Raises
        ------
        ConfigError
            If there is none.
        """
        for site in self.sites:
            if site.name == name:
                return site
        raise ConfigError(f"no site {name!r} in the loopback federation; sites: {[s.name for s in self.sites]}")


@dataclass(frozen=True)
class StageResult:
    """One finished federated stage."""

    stage: str
    run_id: int
    status: str
    seconds: float
    #: ``<runs dir>/run-<id>-<stage>``: round checkpoints, ``global.pt``, ``summary.json``.
    run_dir: Path
    sites: tuple[str, ...]

    @property
    def global_checkpoint(self) -> Path:
        """The stage's final global model on the coordinator."""
        return self.run_dir / "global.pt"

    def progress(self) -> list[dict[str, Any]]:
        """The ServerApp's record of every round (loss, sites answered, seconds; see :mod:`.progress`)."""
        return read_progress(self.run_dir)


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _single_threaded_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@contextlib.contextmanager
def _env_for_children(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables while children are spawned (they inherit them), then restore."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_coordinator(work_dir: Path, datasets: Mapping[str, Path]) -> LoopbackFederation:
    """Create the PKI, register one key per site, and start SuperLink + proxy on loopback.

    Parameters
    ----------
    work_dir
        Folder for the coordinator (``coordinator/``) and the sites (``sites/<name>/``); earlier
        ``coordinator/`` and ``sites/`` sub-folders are replaced, after stopping whatever an
        interrupted earlier run left running there.
    datasets
        Site name → prepared dataset folder.

    Returns
    -------
    LoopbackFederation
        The running coordinator; stop it with :func:`stop_coordinator`.

    Raises
    ------
    ConfigError
        For an invalid site name or no sites.
    ExternalToolError
        If the SuperLink or the proxy does not come up (log tail attached).
    """
    if not datasets:
        raise ConfigError("a loopback federation needs at least one site dataset")
    work_dir = work_dir.resolve()
    coordinator_dir = work_dir / "coordinator"
    if (coordinator_dir / "coordinator.json").is_file():
        superlink.stop(CoordinatorConfig.load(coordinator_dir))  # processes an interrupted earlier run left
    shutil.rmtree(coordinator_dir, ignore_errors=True)
    shutil.rmtree(work_dir / "sites", ignore_errors=True)
    cfg = CoordinatorConfig(
        work_dir=coordinator_dir,
        fleet_host=LOOPBACK,
        fleet_port=free_port(),
        admin_port=free_port(),
        allow=[f"{LOOPBACK}/32"],
    )
    pki.create_server_certificate(pki.create_ca(cfg.pki_dir), [], [])
    sites: list[LoopbackSite] = []
    entries: list[SiteEntry] = []
    for name, dataset in datasets.items():
        if not pki.site_name_ok(name):
            raise ConfigError(f"site name {name!r} must be letters, digits, '.', '_' or '-'")
        site_dir = work_dir / "sites" / name
        pair = pki.create_site_keypair(site_dir / "bundle", name)
        shutil.copy2(pki.PkiPaths(cfg.pki_dir).ca_cert, site_dir / "bundle" / pki.CA_CERT_NAME)
        sites.append(LoopbackSite(name, dataset.resolve(), site_dir / "work", pair.private_key))
        entries.append(SiteEntry(name=name, public_key=pair.public_key))
    cfg = cfg.model_copy(update={"sites": entries})
    cfg.save()
    cfg = CoordinatorConfig.load(coordinator_dir)
    app_dir = write_app_dir(coordinator_dir / "app")
    digest = fab_sha256(app_dir, cfg.flwr_home)
    with _env_for_children({"OMP_NUM_THREADS": "1"}):
        superlink.start(cfg)
    cfg = CoordinatorConfig.load(coordinator_dir)  # start() registered the sites' keys
    log.info(
        "coordinator up: SuperLink on %s:%d, proxy on %s", LOOPBACK, cfg.admin_port, f"{LOOPBACK}:{cfg.fleet_port}"
    )
    return LoopbackFederation(cfg=cfg, app_dir=app_dir, fab_sha256=digest, sites=tuple(sites))


def stop_coordinator(fed: LoopbackFederation) -> list[str]:
    """Stop the proxy and the SuperLink; returns the names of those that were running."""
    return superlink.stop(fed.cfg)


@contextlib.contextmanager
def loopback_federation(work_dir: Path, datasets: Mapping[str, Path]) -> Iterator[LoopbackFederation]:
    """:func:`start_coordinator` … :func:`stop_coordinator`, stopping everything on every way out."""
    restore = exit_on_signals()
    try:
        fed = start_coordinator(work_dir, datasets)
        try:
            yield fed
        finally:
            stop_coordinator(fed)
    finally:
        restore()


def pseudolabel_command(site: LoopbackSite, tasks: Sequence[str]) -> list[str]:
    """The hospital's local step between the teacher stages and distill: ``cardiofm site pseudolabel``."""
    cmd = [str(venv_bin() / "cardiofm"), "site", "pseudolabel", "--data", str(site.dataset)]
    cmd += ["--work-dir", str(site.work_dir)]
    for task in tasks:
        cmd += ["--task", task]
    return cmd


def pseudolabel_sites(
    sites: Sequence[LoopbackSite], tasks: Sequence[str], airflow: LocalAirflow | None = None
) -> dict[str, dict[str, int]]:
    """Every site runs its pseudo-label command, or its DAG in Airflow (in parallel); site → task → cases.

    Raises
    ------
    ExternalToolError
        If a site's command or DAG fails, with its exit code and output tail.
    """
    if airflow is not None:
        _pseudolabel_dags(sites, tasks, airflow)
        return {site.name: _pseudo_counts(site, tasks) for site in sites}

    logs = {site.name: site.work_dir.parent / f"pseudolabel-{site.name}.log" for site in sites}
    procs = []
    for site in sites:
        with logs[site.name].open("wb") as out:
            procs.append(
                subprocess.Popen(
                    pseudolabel_command(site, tasks),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_single_threaded_env(),
                )
            )
    counts: dict[str, dict[str, int]] = {}
    for site, proc in zip(sites, procs, strict=True):
        code = proc.wait()
        if code != 0:
            tail = logs[site.name].read_text(errors="replace")[-2000:]
            raise ExternalToolError(f"site {site.name}: `cardiofm site pseudolabel` exited with {code}:\n{tail}")
        counts[site.name] = _pseudo_counts(site, tasks)
    return counts


def _pseudo_counts(site: LoopbackSite, tasks: Sequence[str]) -> dict[str, int]:
    from cardiofm.federated.task import PSEUDO_DIR, TEACHERS_FILE

    record = json.loads((site.work_dir / PSEUDO_DIR / TEACHERS_FILE).read_text())
    return {t: int(record[t]["cases"]) for t in tasks if t in record}


def _pseudolabel_dags(sites: Sequence[LoopbackSite], tasks: Sequence[str], airflow: LocalAirflow) -> None:
    """Each site's cardiofm-pseudolabel DAG, one Airflow run per site, in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    from cardiofm.pipeline.dag_runner import run_dag

    def one(site: LoopbackSite) -> None:
        form = {"dataset": str(site.dataset), "work_dir": str(site.work_dir), "tasks": list(tasks)}
        run_dag(airflow, "cardiofm-pseudolabel", form, name=f"pseudolabel-{site.name}", env=_single_threaded_env())

    with ThreadPoolExecutor(max_workers=len(sites) or 1) as pool:
        list(pool.map(one, sites))


def join_command(fed: LoopbackFederation, site: LoopbackSite, timeout_s: float) -> list[str]:
    """The hospital's task: ``cardiofm site join`` with TLS, its key, its dataset and the pinned bundle hash."""
    return [
        str(venv_bin() / "cardiofm"),
        "site",
        "join",
        "--superlink",
        fed.fleet_address,
        "--ca",
        str(fed.ca_cert),
        "--key",
        str(site.private_key),
        "--data",
        str(site.dataset),
        "--pin-fab",
        fed.fab_sha256,
        "--work-dir",
        str(site.work_dir),
        "--runtime-port",
        str(free_port()),
        "--timeout-s",
        f"{timeout_s:.0f}",
        "--grace-s",
        f"{GRACE_S:.0f}",
    ]


@dataclass
class _Join:
    site: LoopbackSite
    proc: subprocess.Popen[bytes]
    log_file: Path

    def tail(self, chars: int = 2000) -> str:
        try:
            text = self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            text = ""
        supernode_log = self.site.work_dir / "supernode.log"
        with contextlib.suppress(OSError):
            text += "\n--- SuperNode log\n" + supernode_log.read_text(errors="replace")[-chars:]
        return text


def _start_join(fed: LoopbackFederation, site: LoopbackSite, slug: str, timeout_s: float) -> _Join:
    site.work_dir.mkdir(parents=True, exist_ok=True)
    log_file = site.work_dir.parent / f"join-{slug}.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            join_command(fed, site, timeout_s),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_single_threaded_env(),
            start_new_session=True,
        )
    return _Join(site, proc, log_file)


def _stop_join(join: _Join) -> None:
    """SIGTERM the site task (it stops its SuperNode), then SIGKILL its whole session."""
    if join.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(join.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            join.proc.wait(timeout=_STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(join.proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        join.proc.wait(timeout=_STOP_TIMEOUT_S)


def _wait_for_run(
    cli: FlwrCli,
    run_id: int,
    joins: Sequence[_Join],
    timeout_s: float,
    progress: ProgressTail | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """Wait until the run's real status says finished and return it (each recorded round goes to ``on_round``).

    The site tasks are watched every second (cheap); the SuperLink is asked for the status every
    :data:`STATUS_POLL_S` (each ask starts a ``flwr`` process), and right away once every site task has
    ended. A site task that fails, or a timeout, stops the run and raises.
    """
    deadline = time.monotonic() + timeout_s
    next_status = time.monotonic()
    last = ""

    def report_rounds() -> None:
        if progress is not None and on_round is not None:
            for entry in progress.new_entries():
                on_round(entry)

    while True:
        report_rounds()
        now = time.monotonic()
        codes = [join.proc.poll() for join in joins]
        if now >= next_status or all(code == 0 for code in codes):
            status = str(cli.run_info(run_id).get("status", ""))
            if status != last:
                log.info("run %d: %s", run_id, status)
                last = status
            if status.startswith("finished"):
                report_rounds()  # the last round's line may have come after this loop's read
                return status
            next_status = now + (POLL_S if all(code == 0 for code in codes) else STATUS_POLL_S)
        for join, code in zip(joins, codes, strict=True):
            if code not in (None, 0):
                with contextlib.suppress(ExternalToolError):
                    cli.stop_run(run_id)
                raise ExternalToolError(
                    f"site {join.site.name} left run {run_id} with exit code {code} before it finished; "
                    f"see {join.log_file}",
                    log_tail=join.tail(),
                )
        if now >= deadline:
            with contextlib.suppress(ExternalToolError):
                cli.stop_run(run_id)
            raise FederationTimeoutError(f"run {run_id} did not finish within {timeout_s:.0f} s (status {last})")
        time.sleep(1.0)


def run_stage(
    fed: LoopbackFederation,
    run: FederatedRunConfig,
    site_names: Sequence[str] | None = None,
    timeout_s: float = 1800.0,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> StageResult:
    """Run one federated stage with the given sites (all by default) and return once every site task ended.

    Parameters
    ----------
    fed
        The running coordinator.
    run
        The stage's run config; ``out-dir`` is set to :attr:`LoopbackFederation.runs_dir` and
        ``min-nodes`` to the number of taking-part sites.
    site_names
        Sites that join this run.
    timeout_s
        Limit for the whole run (it is stopped when exceeded).
    on_round
        Called with each round's progress record (:mod:`cardiofm.federated.progress`) while the run goes on.

    Returns
    -------
    StageResult
        Run id, real final status (always ``finished:completed``), duration, coordinator folder.

    Raises
    ------
    ExternalToolError
        If the run ended with another status (its status details in the message), or a site task
        failed (TLS, key, allowlist, unpinned bundle, crash; its log tail attached).
    FederationTimeoutError
        If the run or a site task did not end in time.
    """
    sites = [fed.site(n) for n in site_names] if site_names is not None else list(fed.sites)
    if not sites:
        raise ConfigError(f"stage {run.stage}: no site takes part")
    update = {"out_dir": str(fed.runs_dir), "min_nodes": len(sites), "cardiofm_version": __version__}
    run = FederatedRunConfig.model_validate({**run.model_dump(), **update})
    fed.runs_dir.mkdir(parents=True, exist_ok=True)
    cli = FlwrCli(fed.cfg.flwr_home)
    started = time.monotonic()
    joins: list[_Join] = []
    try:
        for site in sites:
            joins.append(_start_join(fed, site, run.stage_slug, timeout_s + JOIN_EXIT_TIMEOUT_S))
        run_id = cli.start_run(fed.app_dir, run.to_run_config())
        log.info("stage %s: run %d submitted to %d site(s)", run.stage, run_id, len(sites))
        tail = ProgressTail(fed.runs_dir / f"run-{run_id}-{run.stage_slug}")
        status = _wait_for_run(cli, run_id, joins, timeout_s, tail, on_round)
        if status != STATUS_COMPLETED:
            details = cli.run_info(run_id).get("status-details") or "no details"
            tails = "\n".join(f"--- {j.site.name}\n{j.tail()}" for j in joins)
            raise ExternalToolError(
                f"stage {run.stage}: run {run_id} ended as {status} ({details}); see `flwr log {run_id}` and "
                f"{fed.cfg.log_dir}",
                log_tail=tails,
            )
        end = time.monotonic() + JOIN_EXIT_TIMEOUT_S
        for join in joins:
            try:
                code = join.proc.wait(timeout=max(1.0, end - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                raise FederationTimeoutError(
                    f"site {join.site.name} did not end after run {run_id} finished; see {join.log_file}"
                ) from exc
            if code != 0:
                raise ExternalToolError(
                    f"site {join.site.name} ended run {run_id} with exit code {code}; see {join.log_file}",
                    log_tail=join.tail(),
                )
    finally:
        for join in joins:
            _stop_join(join)
    run_dir = fed.runs_dir / f"run-{run_id}-{run.stage_slug}"
    return StageResult(
        stage=run.stage,
        run_id=run_id,
        status=status,
        seconds=time.monotonic() - started,
        run_dir=run_dir,
        sites=tuple(s.name for s in sites),
    )


# -- the demo chain: local-only baselines, then the federated stages -----------------------------
@dataclass(frozen=True)
class ChainSettings:
    """Model sizes and steps of the loopback chain (tiny defaults: minutes on a 2-core CPU).

    Attributes
    ----------
    num_rounds, local_steps
        Rounds per federated stage and optimisation steps per site and round; a local-only teacher
        gets ``num_rounds * local_steps`` steps, the same as each site of the federated teacher.
    student_local_steps
        Steps per site and round of ``distill`` and ``finetune`` (None: ``local_steps``); the student's step
        costs several teacher steps.
    local_epochs
        When above 0, passes over each site's training cases per round instead of ``local_steps``.
    batch_size, teacher_lr, student_lr
        Patches per step; AdamW learning rates of the teacher stages and of ``distill``/``finetune``.
    foreground_fraction, landmark_radius_mm
        Share of patches centred on a labelled structure; radius of the spheres points are trained as.
    spacing_mm
        Isotropic training grid of every model (teachers and student share it: pseudo-labels live on it).
    teacher_patch_vox, student_patch_vox
        Cubic patch edges (voxels).
    teacher_filters, student_feature_size, student_depths, student_num_heads
        Network sizes.
    seed
        Base seed of every stage and local teacher.
    stage_timeout_s
        Limit of one federated run.
    airflow
        Where Airflow runs the sites' DAGs; None: the sites run their commands directly.
    """

    num_rounds: int = 2
    local_steps: int = 3
    student_local_steps: int | None = None
    local_epochs: int = 0
    batch_size: int = 1
    teacher_lr: float = 3e-3
    student_lr: float = 3e-3
    foreground_fraction: float = 0.67
    landmark_radius_mm: float = 4.0
    spacing_mm: float = 3.0
    teacher_patch_vox: int = 32
    student_patch_vox: int = 64
    teacher_filters: tuple[int, ...] = (4, 8, 16, 32)
    student_feature_size: int = 12
    student_depths: tuple[int, int, int, int] = (1, 1, 1, 1)
    student_num_heads: tuple[int, int, int, int] = (1, 1, 1, 1)
    seed: int = 0
    stage_timeout_s: float = 1800.0
    #: Airflow runs each site's pseudo-labelling as its ``cardiofm-pseudolabel`` DAG (None: the site command).
    airflow: LocalAirflow | None = None

    def run_config(self, stage: str, out_dir: Path, **extra: object) -> FederatedRunConfig:
        """The stage's run config (``extra``: further fields, e.g. ``tasks`` or ``init_checkpoint``)."""
        student = not stage.startswith(TEACHER_PREFIX)
        values: dict[str, object] = {
            "stage": stage,
            "num_rounds": self.num_rounds,
            "local_steps": (self.student_local_steps or self.local_steps) if student else self.local_steps,
            "local_epochs": self.local_epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.student_lr if student else self.teacher_lr,
            "foreground_fraction": self.foreground_fraction,
            "landmark_radius_mm": self.landmark_radius_mm,
            "spacing_mm": self.spacing_mm,
            "patch_size_vox": self.student_patch_vox if student else self.teacher_patch_vox,
            "teacher_filters": self.teacher_filters,
            "student_feature_size": self.student_feature_size,
            "student_depths": self.student_depths,
            "student_num_heads": self.student_num_heads,
            "round_timeout_s": self.stage_timeout_s,
            "seed": self.seed,
            "out_dir": str(out_dir.resolve()),
            **extra,
        }
        return FederatedRunConfig.model_validate(values)


@dataclass
class ChainResult:
    """Every model the chain produced (checkpoint paths) and the time of each phase."""

    #: task → site → local-only teacher
    local_teachers: dict[str, dict[str, Path]] = field(default_factory=dict)
    #: task → global teacher of its ``teacher:<task>`` run
    federated_teachers: dict[str, Path] = field(default_factory=dict)
    student_distilled: Path | None = None
    student_finetuned: Path | None = None
    stages: list[StageResult] = field(default_factory=list)
    #: task → site → cases pseudo-labelled
    pseudo_labelled: dict[str, dict[str, int]] = field(default_factory=dict)
    #: phase → seconds
    seconds: dict[str, float] = field(default_factory=dict)


def labelled_tasks(dataset: Path) -> tuple[str, ...]:
    """Tasks (of :data:`~cardiofm.constants.TASKS`) with at least one labelled training case in the dataset."""
    from cardiofm.training.data import load_manifest

    manifest = load_manifest(dataset)
    held = {t for c in manifest.cases if c.split == "train" for t in c.tasks}
    return tuple(t for t in TASKS if t in held)


def train_local_teacher(dataset: Path, task: str, settings: ChainSettings, out: Path) -> Path:
    """A site's local-only teacher: the federated teacher's model and settings, trained on this site alone.

    It gets ``num_rounds * local_steps`` steps, what each site trains of the federated teacher in total.

    Raises
    ------
    MissingResourceError
        If the dataset has no training case labelled for ``task``.
    """
    from cardiofm.federated.task import train_local_teacher as train_alone

    run = settings.run_config(TEACHER_PREFIX + task, out.parent)
    return train_alone(dataset, run, settings.num_rounds * settings.local_steps, out)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def train_local_teachers(
    jobs: Sequence[tuple[str, str, Path, Path]], settings: ChainSettings, workers: int | None = None
) -> list[Path]:
    """Local-only teachers ``(task, site, dataset, out)``, trained side by side, one process and thread each.

    They are independent (each site trains alone), so they run like the sites do: in parallel, here on at
    most ``workers`` processes (default: one per CPU core). Returns the checkpoints in the order of ``jobs``.
    """
    if not jobs:
        return []
    workers = max(1, min(len(jobs), workers or os.cpu_count() or 1))
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        futures = [pool.submit(train_local_teacher, dataset, task, settings, path) for task, _, dataset, path in jobs]
        return [f.result() for f in futures]


def _timed(seconds: dict[str, float], phase: str, began: float) -> None:
    seconds[phase] = round(time.monotonic() - began, 1)


def run_chain(
    fed: LoopbackFederation,
    training_sites: Sequence[str],
    settings: ChainSettings,
    on_phase: Callable[[str], None] | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> ChainResult:
    """Local-only teachers, federated teachers, local pseudo-labels, ``distill``, ``finetune``.

    Parameters
    ----------
    fed
        The running loopback federation; sites not in ``training_sites`` are held out (no labels): they
        join the teacher stages (to receive the teachers), pseudo-label, and take part in ``distill``.
    training_sites
        Sites holding labels; each trains a local-only teacher per task it holds and takes part in ``finetune``.
    settings
        Model sizes and steps.
    on_phase
        Called with the name of each phase as it starts (progress display).
    on_round
        Called with each federated round's progress record as the round ends.

    Returns
    -------
    ChainResult
        Checkpoint paths of every model and the seconds of every phase.

    Raises
    ------
    ConfigError
        If no training site holds any label.
    ExternalToolError, FederationTimeoutError
        If a federated run fails (see :func:`run_stage`).
    """
    notify = on_phase or (lambda _phase: None)
    result = ChainResult()
    held = {name: labelled_tasks(fed.site(name).dataset) for name in training_sites}
    tasks = tuple(t for t in TASKS if any(t in h for h in held.values()))
    if not tasks:
        raise ConfigError("no training site holds a labelled training case: nothing to train")
    out = fed.cfg.work_dir.parent / "local-teachers"

    began = time.monotonic()
    notify("local-only teachers")
    jobs = [
        (task, name, fed.site(name).dataset, out / name / f"teacher-{task}.pt")
        for task in tasks
        for name in training_sites
        if task in held[name]
    ]
    for (task, name, _, _), path in zip(jobs, train_local_teachers(jobs, settings), strict=True):
        result.local_teachers.setdefault(task, {})[name] = path
    _timed(result.seconds, "local-only teachers", began)

    for task in tasks:
        began = time.monotonic()
        stage = TEACHER_PREFIX + task
        notify(f"federated {stage}")
        done = run_stage(
            fed, settings.run_config(stage, fed.runs_dir), timeout_s=settings.stage_timeout_s, on_round=on_round
        )
        result.stages.append(done)
        result.federated_teachers[task] = done.global_checkpoint
        _timed(result.seconds, stage, began)

    began = time.monotonic()
    notify("local pseudo-labels at every site")
    for site, counts in pseudolabel_sites(fed.sites, tasks, settings.airflow).items():
        for task, n in counts.items():
            result.pseudo_labelled.setdefault(task, {})[site] = n
    _timed(result.seconds, "pseudo-labels", began)

    began = time.monotonic()
    notify("federated distill")
    done = run_stage(
        fed,
        settings.run_config("distill", fed.runs_dir, tasks=tasks),
        timeout_s=settings.stage_timeout_s,
        on_round=on_round,
    )
    result.stages.append(done)
    result.student_distilled = done.global_checkpoint
    _timed(result.seconds, "distill", began)

    began = time.monotonic()
    notify("federated finetune (heads, backbone frozen)")
    finetune = settings.run_config(
        "finetune", fed.runs_dir, tasks=tasks, init_checkpoint=str(done.global_checkpoint.resolve())
    )
    done = run_stage(fed, finetune, training_sites, timeout_s=settings.stage_timeout_s, on_round=on_round)
    result.stages.append(done)
    result.student_finetuned = done.global_checkpoint
    _timed(result.seconds, "finetune", began)
    return result
