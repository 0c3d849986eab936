"""``cardiofm prepare``: one site's whole data preparation, with progress and a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cardiofm.cli.pacs_options import CALLED_AE, CALLING_AE, DICOMWEB_URL, DIMSE, PACS_PASSWORD_ENV, PACS_USER


def prepare(
    site_dir: Path = typer.Option(..., "--site-dir", help="The site folder (its site.yaml, pacs/ and annotations)."),
    out: Path = typer.Option(..., "--out", help="Where to write the site dataset and its reports."),
    config: Path | None = typer.Option(None, "--config", help="The site's site.yaml (default: SITE_DIR/site.yaml)."),
    segmenter: str = typer.Option("fallback", "--segmenter", help="Heart segmenter: fallback or totalsegmentator."),
    segmenter_python: Path | None = typer.Option(
        None, "--segmenter-python", help="Python of the segmenter environment (TotalSegmentator)."
    ),
    margin_mm: float = typer.Option(20.0, "--margin-mm", help="Margin around the heart box, mm."),
    spacing_mm: float = typer.Option(1.0, "--spacing-mm", help="Isotropic spacing of the heart crop, mm."),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the frozen train/test split."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of cases in the test split."),
    dicomweb_url: str | None = DICOMWEB_URL,
    dimse: str | None = DIMSE,
    dimse_mode: str = typer.Option("c-get", "--dimse-mode", help="c-get, or c-move (the PACS connects back)."),
    called_ae: str = CALLED_AE,
    calling_ae: str = CALLING_AE,
    move_ae: str | None = typer.Option(
        None, "--move-ae", help="C-MOVE destination AE title, as registered at the PACS (default: --calling-ae)."
    ),
    move_port: int | None = typer.Option(
        None, "--move-port", help="C-MOVE: local port the PACS sends the instances to (required for c-move)."
    ),
    listen_address: str = typer.Option(
        "0.0.0.0", "--listen-address", help="C-MOVE: local address to receive on (the PACS must reach it)."
    ),
    pacs_user: str | None = PACS_USER,
    pacs_password_env: str = PACS_PASSWORD_ENV,
) -> None:
    """Select, convert, crop and label every study of one site; write the site dataset."""
    import os

    from cardiofm.contracts.pacs import PacsParams
    from cardiofm.contracts.steps import CropHeartParams
    from cardiofm.dicom.pacs import open_source
    from cardiofm.errors import ConfigError
    from cardiofm.pipeline.prepare import prepare_site

    if segmenter not in ("fallback", "totalsegmentator"):
        raise ConfigError(f"--segmenter {segmenter!r} is not one of: fallback, totalsegmentator")
    kind: Literal["fallback", "totalsegmentator"] = "fallback" if segmenter == "fallback" else "totalsegmentator"
    crop = CropHeartParams(
        segmenter=kind,
        margin_mm=margin_mm,
        spacing_mm=spacing_mm,
        segmenter_python=str(segmenter_python) if segmenter_python else None,
    )
    pacs = PacsParams(
        dicomweb_url=dicomweb_url,
        pacs_user=pacs_user,
        pacs_password_env=pacs_password_env,
        dimse=dimse,
        dimse_mode=dimse_mode,
        called_ae=called_ae,
        calling_ae=calling_ae,
        move_ae=move_ae,
        move_port=move_port,
        listen_address=listen_address,
    )
    source = open_source(pacs, os.environ)  # the settings and the password are checked before anything starts
    err = Console(stderr=True)
    if source is not None:
        err.print(f"reading the studies from the PACS at {source.where}")
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("preparing", total=None)
        result = prepare_site(
            site_dir,
            out,
            config=config,
            crop=crop,
            split_seed=split_seed,
            test_fraction=test_fraction,
            on_case=lambda step, _case: bar.update(task, description=step, advance=1),
            pacs=pacs,
        )
    table = Table(title=f"prepare {site_dir.name}: {result.studies_in} studies in")
    for col in ("step", "in", "done", "quarantined", "seconds"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for s in result.steps:
        table.add_row(s.step, str(s.total), str(len(s.done)), str(len(s.quarantined)), f"{s.seconds:.1f}")
    console = Console(width=max(Console().width, 120))
    console.print(table)
    n_q = sum(1 for q in result.quarantined if q["kind"] == "study")
    console.print(
        f"{result.studies_in} in = {result.prepared} prepared + {n_q} quarantined"
        + ("" if result.balanced else "  [red]UNBALANCED[/red]")
    )
    for q in result.quarantined:
        console.print(f"  quarantined {q['kind']} ({q['step']}): {q['reason']}")
    console.print(f"dataset: {out / 'manifest.json'}; reports: selection.json, quarantine.json")
