"""``cardiofm demo``: the whole product on the embedded default, on a synthetic federation.

1. generate the synthetic hospitals and prepare every site's dataset: with ``--airflow-python`` (``make demo``)
   Airflow runs each site's ``cardiofm-prepare`` DAG on the local backend, as a clinic admin triggers it;
   without, the same steps run in this process (series selection, conversion, heart crop, label import);
2. on loopback, a real coordinator (CA, site keys, SuperLink with TLS and node authentication behind
   the allowlisting proxy) and one ``cardiofm site join`` SuperNode per site, pinned to the app
   bundle's hash: local-only teachers, federated teachers, local pseudo-labels at every site,
   ``distill``, ``finetune`` (:mod:`cardiofm.federated.loopback`);
3. every model on every training site's test split and on the held-out sites, one table per task,
   and ``results.json`` (:mod:`cardiofm.evaluation.report`).

The generator's truth (``federation.json``, ``ground_truth/``) is used for evaluation only; the
federation never reads it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from cardiofm.errors import CardioFMError, ConfigError
from cardiofm.pipeline.dag_runner import LocalAirflow

if TYPE_CHECKING:
    from cardiofm.contracts.federation import FederationRecord
    from cardiofm.federated.loopback import ChainSettings
    from cardiofm.pipeline.report_step import PrepareResult
from rich.progress import Progress
from rich.table import Table


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for everything the demo writes."),
    seed: int = typer.Option(0, "--seed", envvar="SEED", help="Random seed of the synthetic federation."),
    sites: int = typer.Option(3, "--sites", envvar="SITES", min=1, help="Number of hospitals."),
    cases: int = typer.Option(6, "--cases", envvar="CASES", min=1, help="Studies per hospital."),
    profile_name: str = typer.Option(
        "demo",
        "--profile",
        help="Chain settings: demo (2 CPU cores, minutes) or paper (the paper's sizes; GPUs, refused on a CPU).",
    ),
    rounds: int | None = typer.Option(None, "--rounds", min=1, help="Rounds of every federated stage (profile's)."),
    local_steps: int | None = typer.Option(
        None, "--local-steps", min=1, help="Training steps per site and round (replaces the profile's)."
    ),
    force: bool = typer.Option(False, "--force", help="Run a GPU profile without a GPU anyway."),
    airflow_python: Path | None = typer.Option(
        None,
        "--airflow-python",
        envvar="CARDIOFM_AIRFLOW_PYTHON",
        help="Airflow's Python (make airflow): each site's preparation and pseudo-labelling run as its DAGs.",
    ),
) -> None:
    """Run the demo: synthetic hospitals, their datasets, the federated chain on loopback, and its evaluation."""
    from cardiofm.constants import DOWNSTREAM_TASKS, TASKS
    from cardiofm.federated.profiles import get_profile, with_overrides
    from cardiofm.phantoms.federation import FederationSettings, generate_federation
    from cardiofm.phantoms.summary import summary_rows, summary_table

    label_columns = (*TASKS, *DOWNSTREAM_TASKS)
    console = Console(width=max(Console().width, 150))
    err = Console(stderr=True)
    try:
        profile = with_overrides(get_profile(profile_name), num_rounds=rounds, local_steps=local_steps)
        check_device(profile.needs_gpu, force, profile.name)
    except CardioFMError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from exc
    console.print(f"profile {profile.name}: {profile.description}")
    start = time.perf_counter()
    airflow = LocalAirflow(airflow_python, out / "airflow") if airflow_python else None
    if airflow is not None:
        airflow.check()
    settings = FederationSettings(sites=sites, cases_per_site=cases, seed=seed)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("generating synthetic hospitals", total=sites * cases)
        record = generate_federation(out / "federation", settings, progress=lambda _m: bar.advance(task))
    console.print(summary_table(record))
    t_generate = time.perf_counter() - start

    how = "the cardiofm-prepare DAG in Airflow" if airflow else "cardiofm prepare"
    table = Table(title=f"Site data preparation (select → convert → crop heart → import labels), by {how}")
    for col in ("site", "in", "prepared", "quarantined", "series correct", *label_columns, "train/test", "seconds"):
        table.add_column(col, justify="left" if col == "site" else "right")
    prepared: list[dict[str, object]] = []
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("preparing sites", total=sites)
        for site in record.sites:
            t0 = time.perf_counter()
            result = prepare_one_site(out / "federation" / site.folder, out / "datasets" / site.site_id, airflow)
            seconds = time.perf_counter() - t0
            manifest = result.manifest
            truth = {s.study_uid: s.correct_series_uid for s in site.studies}
            chosen = {c.source.study_uid: c.source.series_uid for c in manifest.cases} if manifest else {}
            correct = sum(truth.get(uid) == series for uid, series in chosen.items())
            per_task = {t: sum(t in c.tasks for c in manifest.cases) if manifest else 0 for t in label_columns}
            n_test = sum(c.split == "test" for c in manifest.cases) if manifest else 0
            n_q = sum(1 for q in result.quarantined if q["kind"] == "study")
            table.add_row(
                site.site_id,
                str(result.studies_in),
                str(result.prepared),
                str(n_q),
                f"{correct}/{len(chosen)}",
                *(str(per_task[t]) for t in label_columns),
                f"{result.prepared - n_test}/{n_test}",
                f"{seconds:.1f}",
            )
            prepared.append(
                {
                    "site": site.site_id,
                    "in": result.studies_in,
                    "prepared": result.prepared,
                    "quarantined": n_q,
                    "series_correct": correct,
                    "labelled": per_task,
                    "seconds": round(seconds, 1),
                }
            )
            bar.advance(task)
    console.print(table)
    t_prepare = time.perf_counter() - start - t_generate
    try:
        outcome = run_federated_demo(out, record, console, err, replace(profile.settings, seed=seed, airflow=airflow))
    except CardioFMError as exc:
        err.print(f"[bold red]demo failed:[/] {exc}")
        tail = getattr(exc, "log_tail", "")
        if tail:
            err.print(tail[-3000:], markup=False, highlight=False)
        raise typer.Exit(exc.exit_code) from exc
    seconds = time.perf_counter() - start
    timings = {"generate": round(t_generate, 1), "prepare": round(t_prepare, 1), **outcome.seconds}
    timings["total"] = round(seconds, 1)
    results = {
        "seed": seed,
        "sites": sites,
        "cases": cases,
        "seconds": timings,
        "federation": {"sites": summary_rows(record), "prepared": prepared, **outcome.federation},
        "results": outcome.results,
    }
    results["curves"] = outcome.curves
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    from cardiofm.evaluation.html_report import write_report

    report = write_report(json.loads(json.dumps(results, default=str)), out / "report.html")
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total")
    console.print(f"time per phase: {phases}")
    console.print(f"[bold]total {seconds / 60:.1f} min[/]; results in {out / 'results.json'}, plots in {report}")


def check_device(needs_gpu: bool, force: bool, name: str) -> None:
    """Refuse a GPU profile on a machine without CUDA, unless forced.

    Raises
    ------
    ConfigError
        If the profile needs a GPU, none is visible to torch, and ``force`` is off.
    """
    if not needs_gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    if not force:
        raise ConfigError(
            f"profile {name!r} needs a GPU and torch sees none; on this CPU it would take weeks. Use the demo "
            "profile, run on a machine with a GPU (bench/gpu_check.sh checks one), or pass --force to run it anyway"
        )


def train_cases(dataset: Path) -> int:
    """Cases of the dataset's train split."""
    from cardiofm.training.data import load_manifest

    return sum(c.split == "train" for c in load_manifest(dataset).cases)


def prepare_one_site(site_dir: Path, dataset: Path, airflow: LocalAirflow | None) -> PrepareResult:
    """A site's preparation: its cardiofm-prepare DAG run by Airflow, or the same steps in this process."""
    from cardiofm.pipeline.dag_runner import run_dag
    from cardiofm.pipeline.prepare import prepare_site
    from cardiofm.pipeline.report_step import read_prepare_result

    if airflow is None:
        return prepare_site(site_dir, dataset)
    form = {"site_config": str(site_dir / "site.yaml"), "dataset_dir": str(dataset), "segmenter": "fallback"}
    run_dag(airflow, "cardiofm-prepare", form, name=f"prepare-{dataset.name}")
    return read_prepare_result(dataset)


@dataclass(frozen=True)
class _Outcome:
    """What the federated part of the demo hands back to the CLI: results, federation facts, seconds per phase."""

    results: dict[str, object]
    federation: dict[str, object]
    seconds: dict[str, float]
    #: ``federated``: stage → its rounds' progress records; ``local``: task → site → loss per round-equivalent.
    curves: dict[str, object]


def run_federated_demo(
    out: Path,
    record: FederationRecord,
    console: Console,
    err: Console,
    settings: ChainSettings,
) -> _Outcome:
    """The chain on a loopback federation, then the evaluation tables; raises on any failed stage."""
    from cardiofm.constants import TASKS
    from cardiofm.evaluation.evaluate import phantom_truth
    from cardiofm.evaluation.report import DemoModels, Evaluator, case_views, model_results, results_table
    from cardiofm.federated.loopback import labelled_tasks, loopback_federation, run_chain
    from cardiofm.federated.profiles import estimate_gpu_hours
    from cardiofm.federated.progress import format_entry

    datasets = {s.site_id: out / "datasets" / s.site_id for s in record.sites}
    datasets = {name: path for name, path in datasets.items() if (path / "manifest.json").is_file()}
    training = [s.site_id for s in record.sites if not s.held_out and s.site_id in datasets]
    heldout = [s.site_id for s in record.sites if s.held_out and s.site_id in datasets]
    held = {name: labelled_tasks(datasets[name]) for name in training}
    cases = {name: train_cases(datasets[name]) for name in datasets}
    hours = estimate_gpu_hours(settings, cases, held)
    console.print(
        "expected GPU hours of training per site (one current data-centre GPU, bf16): "
        + ", ".join(f"{site} {h:.2f} h" for site, h in hours.items())
    )
    began = time.perf_counter()
    with Progress(console=err, transient=True) as bar:
        step = bar.add_task("starting the coordinator (CA, site keys, SuperLink, proxy)", total=None)
        with loopback_federation(out / "loopback", datasets) as fed:
            console.print(
                f"coordinator on loopback: TLS, {len(fed.sites)} registered site keys, proxy {fed.fleet_address} "
                f"(Fleet API only); sites pin app bundle sha256 {fed.fab_sha256[:16]}…"
            )
            start_s = round(time.perf_counter() - began, 1)

            def on_round(entry: dict[str, object]) -> None:  # one line per round, also when not on a terminal
                (bar.console if console.is_terminal else console).print(format_entry(entry), highlight=False)

            chain = run_chain(
                fed,
                training,
                settings,
                on_phase=lambda phase: bar.update(step, description=phase),
                on_round=on_round,
            )
    seconds = {"coordinator start": start_s, **chain.seconds}
    began = time.perf_counter()
    views = out / "evaluation" / "views"
    train_views = {name: case_views(datasets[name], views, "test") for name in training}
    heldout_views = [v for name in heldout for v in case_views(datasets[name], views, "all")]
    models = DemoModels(
        chain.local_teachers, chain.federated_teachers, chain.student_distilled, chain.student_finetuned
    )
    with Progress(console=err, transient=True) as bar:
        step = bar.add_task("evaluating every model (generator truth, evaluation only)", total=None)
        evaluator = Evaluator(phantom_truth(out / "federation"), on_case=lambda: bar.advance(step))
        results = model_results(models, train_views, heldout_views, evaluator)
    seconds["evaluate"] = round(time.perf_counter() - began, 1)
    for task in TASKS:
        console.print(results_table(results, task))
    federation: dict[str, object] = {
        "training_sites": training,
        "heldout_sites": heldout,
        "app_bundle_sha256": fed.fab_sha256,
        "settings": {
            "rounds": settings.num_rounds,
            "local_steps": settings.local_steps,
            "student_local_steps": settings.student_local_steps or settings.local_steps,
            "local_epochs": settings.local_epochs,
            "batch_size": settings.batch_size,
            "teacher_lr": settings.teacher_lr,
            "student_lr": settings.student_lr,
            "foreground_fraction": settings.foreground_fraction,
            "landmark_radius_mm": settings.landmark_radius_mm,
            "teacher_patch_vox": settings.teacher_patch_vox,
            "student_patch_vox": settings.student_patch_vox,
            "spacing_mm": settings.spacing_mm,
            "teacher_filters": list(settings.teacher_filters),
            "student_feature_size": settings.student_feature_size,
        },
        "expected_gpu_hours_per_site": hours,
        "runs": [
            {
                "stage": r.stage,
                "run_id": r.run_id,
                "status": r.status,
                "sites": list(r.sites),
                "seconds": round(r.seconds, 1),
            }
            for r in chain.stages
        ],
        "pseudo_labelled": chain.pseudo_labelled,
    }
    curves: dict[str, object] = {
        "federated": {r.stage: r.progress() for r in chain.stages},
        "local": {
            task: {site: local_curve(path, settings.num_rounds) for site, path in by_site.items()}
            for task, by_site in chain.local_teachers.items()
        },
    }
    return _Outcome(dict(results), federation, seconds, curves)


def local_curve(checkpoint: Path, rounds: int) -> list[dict[str, float]]:
    """A local-only teacher's training loss per round-equivalent: its steps in ``rounds`` equal blocks."""
    from cardiofm.training.checkpoint import load_checkpoint

    losses = [h["loss"] for h in load_checkpoint(checkpoint).history]
    size = max(1, math.ceil(len(losses) / rounds))
    blocks = [losses[i : i + size] for i in range(0, len(losses), size)]
    return [{"round": n + 1, "loss": round(sum(b) / len(b), 4)} for n, b in enumerate(blocks) if b]
