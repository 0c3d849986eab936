"""``cardiofm measure``: TAVI measurements of one CT from its landmarks (and CT, calcification mask)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from cardiofm.contracts.measurements import MeasurementReport

_RULES = ("auto", "fixed-850", "lumen-plus-100")


def measure(
    landmarks: Path = typer.Option(
        ..., "--landmarks", help="landmarks.json (canonical or predicted), .mps or .mrk.json with canonical labels."
    ),
    ct: Path | None = typer.Option(None, "--ct", help="The CT as NIfTI (HU); enables annulus, LVOT, sinus, STJ."),
    calcification: Path | None = typer.Option(
        None, "--calcification", help="Calcification mask as NIfTI, on the CT's grid; enables calcium volumes."
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write measurements.json into."),
    non_contrast: bool = typer.Option(
        False, "--non-contrast", help="The CT is a non-contrast calcium-scoring series (enables Agatston)."
    ),
    calcium_hu_rule: str = typer.Option(
        "auto",
        "--calcium-hu-rule",
        help="Calcium HU rule: auto (lumen+100 HU if the lumen was measured, else 850 HU; 130 HU if non-contrast), "
        "fixed-850 or lumen-plus-100.",
    ),
) -> None:
    """Compute the TAVI measurements (SCCT 2019 set) and write OUT/measurements.json."""
    from rich.console import Console

    from cardiofm.errors import ConfigError
    from cardiofm.imaging.nifti import load_nifti
    from cardiofm.measurements.calcium import CalciumRule
    from cardiofm.measurements.io import read_landmarks_for_measurement
    from cardiofm.measurements.report import measure_all

    rules: dict[str, CalciumRule] = {"auto": "auto", "fixed-850": "fixed-850", "lumen-plus-100": "lumen-plus-100"}
    if calcium_hu_rule not in rules:
        raise ConfigError(f"--calcium-hu-rule {calcium_hu_rule!r} is not one of: {', '.join(_RULES)}")
    points = read_landmarks_for_measurement(landmarks)
    ct_volume = load_nifti(ct, float32=True) if ct is not None else None
    calc_volume = load_nifti(calcification) if calcification is not None else None
    report = measure_all(points, ct_volume, calc_volume, non_contrast=non_contrast, calcium_rule=rules[calcium_hu_rule])
    out.mkdir(parents=True, exist_ok=True)
    (out / "measurements.json").write_text(report.model_dump_json(by_alias=True, indent=2) + "\n", encoding="utf-8")
    console = Console(width=max(Console().width, 120))
    console.print(measurement_table(report))
    console.print(f"wrote {out / 'measurements.json'}")


def measurement_table(report: MeasurementReport) -> Table:
    """The report as a table: value and unit, or why the measurement is not available."""
    from rich.table import Table

    table = Table(title="TAVI measurements")
    for column in ("measurement", "value", "unit", "note"):
        table.add_column(column)
    for m in report.measurements:
        value = f"{m.value:.2f}" if m.value is not None else "-"
        table.add_row(m.name, value, m.unit, m.reason or "")
    return table
