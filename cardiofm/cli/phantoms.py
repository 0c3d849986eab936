"""``cardiofm phantoms``: synthetic hospitals for tests, the demo and quality measurements."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress

from cardiofm.errors import ConfigError

if TYPE_CHECKING:
    from cardiofm.phantoms.scanners import StudySize

app = typer.Typer(
    help="Generate synthetic hospitals (DICOM PACS folders, annotations, ground truth).", no_args_is_help=True
)

_SIZE_HELP = "Study size preset: tiny (64²×40), small (128²×80) or full (512²×300)."


def _size(preset: str, matrix: int | None, slices: int | None) -> StudySize:
    from cardiofm.phantoms.scanners import StudySize

    try:
        base = StudySize.preset(preset)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return StudySize(
        base.name if matrix is None and slices is None else "custom",
        matrix if matrix is not None else base.matrix,
        slices if slices is not None else base.slices,
    )


@app.command("federation")
def federation(
    out: Path = typer.Option(..., "--out", help="Folder to create the federation in."),
    sites: int = typer.Option(3, "--sites", min=1, help="Number of hospitals."),
    cases_per_site: int = typer.Option(6, "--cases-per-site", min=1, help="Studies (patients) per hospital."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same federation."),
    size: str = typer.Option("small", "--size", help=_SIZE_HELP),
    matrix: int | None = typer.Option(
        None, "--matrix", min=16, help="Override the in-plane matrix of the main series."
    ),
    slices: int | None = typer.Option(None, "--slices", min=4, help="Override the slice count of the main series."),
    series_per_study: int = typer.Option(
        5, "--series-per-study", min=1, max=6, help="Series per study: the contrast series plus distractors."
    ),
    held_out_sites: int | None = typer.Option(
        None, "--held-out-sites", min=0, help="Sites (at the end) kept out of training; default 1 if ≥ 3 sites."
    ),
) -> None:
    """Generate a federation of synthetic hospitals and print its summary table."""
    from cardiofm.phantoms.federation import FederationSettings, generate_federation
    from cardiofm.phantoms.summary import summary_table

    settings = FederationSettings(
        sites=sites,
        cases_per_site=cases_per_site,
        seed=seed,
        size=_size(size, matrix, slices),
        series_per_study=series_per_study,
        held_out_sites=held_out_sites,
    )
    if settings.n_held_out() >= sites:
        raise ConfigError(f"--held-out-sites {settings.n_held_out()} leaves no training site among {sites}")
    console = Console(stderr=True)
    start = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("generating studies", total=sites * cases_per_site)
        record = generate_federation(out, settings, progress=lambda _msg: bar.advance(task))
    Console(width=max(Console().width, 150)).print(summary_table(record))
    console.print(f"wrote {out} in {time.perf_counter() - start:.1f} s")


@app.command("case")
def case(
    out: Path = typer.Option(..., "--out", help="Folder to write the study (pacs/) and its ground truth to."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    profile: int = typer.Option(0, "--profile", min=0, help="Scanner profile index (0..3 cycle through vendors)."),
    size: str = typer.Option("small", "--size", help=_SIZE_HELP),
    matrix: int | None = typer.Option(None, "--matrix", min=16, help="Override the in-plane matrix."),
    slices: int | None = typer.Option(None, "--slices", min=4, help="Override the slice count."),
    series_per_study: int = typer.Option(1, "--series-per-study", min=1, max=6, help="Series in the study."),
) -> None:
    """Generate one synthetic patient: a DICOM study plus its ground truth."""
    from cardiofm.phantoms.federation import generate_study
    from cardiofm.phantoms.scanners import site_profile

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, 1]))
    prof = site_profile(profile, rng)
    ids = {
        "site_id": "case",
        "case_id": "case-0001",
        "patient_id": f"P{seed:06d}",
        "accession": f"A{seed:08d}",
        "seed_key": f"case/{seed}/{profile}",
    }
    start = time.perf_counter()
    record, anatomy, _ = generate_study(
        out / "pacs", out / "ground_truth", prof, _size(size, matrix, slices), series_per_study, rng, ids
    )
    typer.echo(
        f"wrote study {record.case_id} ({len(record.series)} series, {anatomy.calcium_burden} calcium) "
        f"to {out} in {time.perf_counter() - start:.1f} s"
    )
