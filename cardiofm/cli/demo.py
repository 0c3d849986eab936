"""``cardiofm demo``: the whole product on the embedded default, on a synthetic federation.

At this stage: generate the synthetic hospitals, then prepare every site's dataset with the same
steps a Kaapana DAG runs (series selection, conversion, heart crop, label import), and print what
each site holds. The check against ``federation.json`` (the generator's truth) is evaluation only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table


def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for everything the demo writes."),
    seed: int = typer.Option(0, "--seed", envvar="SEED", help="Random seed of the synthetic federation."),
    sites: int = typer.Option(3, "--sites", envvar="SITES", min=1, help="Number of hospitals."),
    cases: int = typer.Option(6, "--cases", envvar="CASES", min=1, help="Studies per hospital."),
) -> None:
    """Run the demo: generate a synthetic federation and prepare every site's dataset."""
    from cardiofm.constants import TASKS
    from cardiofm.phantoms.federation import FederationSettings, generate_federation
    from cardiofm.phantoms.summary import summary_rows, summary_table
    from cardiofm.pipeline.prepare import prepare_site

    console = Console(width=max(Console().width, 150))
    err = Console(stderr=True)
    start = time.perf_counter()
    settings = FederationSettings(sites=sites, cases_per_site=cases, seed=seed)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("generating synthetic hospitals", total=sites * cases)
        record = generate_federation(out / "federation", settings, progress=lambda _m: bar.advance(task))
    console.print(summary_table(record))
    t_generate = time.perf_counter() - start

    table = Table(title="Site data preparation (select → convert → crop heart → import labels)")
    for col in ("site", "in", "prepared", "quarantined", "series correct", *TASKS, "train/test", "seconds"):
        table.add_column(col, justify="left" if col == "site" else "right")
    prepared: list[dict[str, object]] = []
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("preparing sites", total=sites)
        for site in record.sites:
            t0 = time.perf_counter()
            result = prepare_site(out / "federation" / site.folder, out / "datasets" / site.site_id)
            seconds = time.perf_counter() - t0
            manifest = result.manifest
            truth = {s.study_uid: s.correct_series_uid for s in site.studies}
            chosen = {c.source.study_uid: c.source.series_uid for c in manifest.cases} if manifest else {}
            correct = sum(truth.get(uid) == series for uid, series in chosen.items())
            per_task = {t: sum(t in c.tasks for c in manifest.cases) if manifest else 0 for t in TASKS}
            n_test = sum(c.split == "test" for c in manifest.cases) if manifest else 0
            n_q = sum(1 for q in result.quarantined if q["kind"] == "study")
            table.add_row(
                site.site_id,
                str(result.studies_in),
                str(result.prepared),
                str(n_q),
                f"{correct}/{len(chosen)}",
                *(str(per_task[t]) for t in TASKS),
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
    seconds = time.perf_counter() - start
    results = {
        "stage": "prepare",
        "seed": seed,
        "seconds": {"generate": round(t_generate, 1), "total": round(seconds, 1)},
        "sites": summary_rows(record),
        "prepared": prepared,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    console.print(
        f"federation in {out / 'federation'}, site datasets in {out / 'datasets'}, "
        f"summary in {out / 'results.json'} ({seconds:.1f} s)"
    )
