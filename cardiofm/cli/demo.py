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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from cardiofm.errors import CardioFMError
from cardiofm.pipeline.dag_runner import LocalAirflow

if TYPE_CHECKING:
    from cardiofm.contracts.federation import FederationRecord
    from cardiofm.pipeline.report_step import PrepareResult
from rich.progress import Progress
from rich.table import Table


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for everything the demo writes."),
    seed: int = typer.Option(0, "--seed", envvar="SEED", help="Random seed of the synthetic federation."),
    sites: int = typer.Option(3, "--sites", envvar="SITES", min=1, help="Number of hospitals."),
    cases: int = typer.Option(6, "--cases", envvar="CASES", min=1, help="Studies per hospital."),
    rounds: int = typer.Option(2, "--rounds", min=1, help="Rounds of every federated stage."),
    local_steps: int = typer.Option(3, "--local-steps", min=1, help="Training steps per site and round."),
    airflow_python: Path | None = typer.Option(
        None,
        "--airflow-python",
        envvar="CARDIOFM_AIRFLOW_PYTHON",
        help="Airflow's Python (make airflow): each site's preparation and pseudo-labelling run as its DAGs.",
    ),
) -> None:
    """Run the demo: synthetic hospitals, their datasets, the federated chain on loopback, and its evaluation."""
    from cardiofm.constants import DOWNSTREAM_TASKS, TASKS
    from cardiofm.phantoms.federation import FederationSettings, generate_federation
    from cardiofm.phantoms.summary import summary_rows, summary_table

    label_columns = (*TASKS, *DOWNSTREAM_TASKS)
    console = Console(width=max(Console().width, 150))
    err = Console(stderr=True)
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
        outcome = run_federated_demo(out, record, console, err, seed, rounds, local_steps, airflow)
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
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total")
    console.print(f"time per phase: {phases}")
    console.print(f"[bold]total {seconds / 60:.1f} min[/]; results in {out / 'results.json'}")


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


def run_federated_demo(
    out: Path,
    record: FederationRecord,
    console: Console,
    err: Console,
    seed: int,
    rounds: int,
    local_steps: int,
    airflow: LocalAirflow | None = None,
) -> _Outcome:
    """The chain on a loopback federation, then the evaluation tables; raises on any failed stage."""
    from cardiofm.constants import TASKS
    from cardiofm.evaluation.evaluate import phantom_truth
    from cardiofm.evaluation.report import DemoModels, Evaluator, case_views, model_results, results_table
    from cardiofm.federated.loopback import ChainSettings, loopback_federation, run_chain

    datasets = {s.site_id: out / "datasets" / s.site_id for s in record.sites}
    datasets = {name: path for name, path in datasets.items() if (path / "manifest.json").is_file()}
    training = [s.site_id for s in record.sites if not s.held_out and s.site_id in datasets]
    heldout = [s.site_id for s in record.sites if s.held_out and s.site_id in datasets]
    settings = ChainSettings(num_rounds=rounds, local_steps=local_steps, seed=seed, airflow=airflow)
    began = time.perf_counter()
    with Progress(console=err, transient=True) as bar:
        step = bar.add_task("starting the coordinator (CA, site keys, SuperLink, proxy)", total=None)
        with loopback_federation(out / "loopback", datasets) as fed:
            console.print(
                f"coordinator on loopback: TLS, {len(fed.sites)} registered site keys, proxy {fed.fleet_address} "
                f"(Fleet API only); sites pin app bundle sha256 {fed.fab_sha256[:16]}…"
            )
            start_s = round(time.perf_counter() - began, 1)
            chain = run_chain(fed, training, settings, on_phase=lambda phase: bar.update(step, description=phase))
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
            "spacing_mm": settings.spacing_mm,
            "teacher_filters": list(settings.teacher_filters),
            "student_feature_size": settings.student_feature_size,
        },
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
    return _Outcome(dict(results), federation, seconds)
