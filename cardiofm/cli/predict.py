"""``cardiofm predict``: one CT (NIfTI, DICOM folder or PACS series) → landmarks, calcium, measurements, exports."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.table import Table

from cardiofm.cli.measure import measurement_table
from cardiofm.cli.pacs_options import CALLED_AE, CALLING_AE, DICOMWEB_URL, DIMSE, PACS_PASSWORD_ENV, PACS_USER
from cardiofm.contracts.predict import DEFAULT_MIN_CONFIDENCE


def predict(
    model: list[Path] = typer.Option(
        ..., "--model", help="Model release folder or checkpoint (.pt); repeat for one teacher per head."
    ),
    input_path: Path | None = typer.Option(
        None, "--input", help="The CT: a NIfTI file (.nii, .nii.gz) or a folder with one DICOM series."
    ),
    series_uid: str | None = typer.Option(
        None, "--pacs-series", help="Series Instance UID of the CT in the PACS (with --dicomweb-url or --dimse)."
    ),
    study_uid: str | None = typer.Option(
        None, "--study-uid", help="Its Study Instance UID (optional: saves searching the PACS for the series)."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (landmarks, calcification, measurements, exports)."),
    segmenter: str = typer.Option("fallback", "--segmenter", help="Heart segmenter: fallback or totalsegmentator."),
    segmenter_python: Path | None = typer.Option(
        None, "--segmenter-python", help="Python of the TotalSegmentator environment (default: this one)."
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda."),
    min_confidence: float = typer.Option(
        DEFAULT_MIN_CONFIDENCE, "--min-confidence", min=0.0, max=1.0, help="Below it a landmark is listed as missing."
    ),
    non_contrast: bool = typer.Option(
        False, "--non-contrast", help="The CT is a non-contrast calcium-scoring series (only then: Agatston score)."
    ),
    send: bool = typer.Option(False, "--send", help="Store the DICOM SEG and SR in the PACS the series came from."),
    keep_work: bool = typer.Option(False, "--keep-work", help="Keep the converted series and the heart crop."),
    dicomweb_url: str | None = DICOMWEB_URL,
    dimse: str | None = DIMSE,
    called_ae: str = CALLED_AE,
    calling_ae: str = CALLING_AE,
    pacs_user: str | None = PACS_USER,
    pacs_password_env: str = PACS_PASSWORD_ENV,
) -> None:
    """Predict one CT: landmarks (LPS mm), calcification, TAVI measurements, report.png, MITK/Slicer/DICOM exports."""
    from cardiofm.contracts.pacs import PacsParams
    from cardiofm.contracts.steps import CropHeartParams
    from cardiofm.errors import ConfigError
    from cardiofm.prediction.run import PredictRequest, predict_ct

    if segmenter not in ("fallback", "totalsegmentator"):
        raise ConfigError(f"--segmenter {segmenter!r} is not one of: fallback, totalsegmentator")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r} is not one of: auto, cpu, cuda")
    kind: Literal["fallback", "totalsegmentator"] = "fallback" if segmenter == "fallback" else "totalsegmentator"
    pacs = PacsParams(
        dicomweb_url=dicomweb_url,
        pacs_user=pacs_user,
        pacs_password_env=pacs_password_env,
        dimse=dimse,
        called_ae=called_ae,
        calling_ae=calling_ae,
    )
    pacs.check()
    if send and pacs.kind == "folder":
        raise ConfigError("--send needs the PACS to store into: give --dicomweb-url or --dimse")
    request = PredictRequest(
        models=tuple(str(m) for m in model),
        out_dir=out,
        input_path=input_path,
        series_uid=series_uid,
        study_uid=study_uid,
        pacs=pacs,
        crop=CropHeartParams(
            segmenter=kind, segmenter_python=str(segmenter_python) if segmenter_python else None, device=device
        ),
        device=device,
        min_confidence=min_confidence,
        non_contrast=non_contrast,
        send=send,
        keep_work=keep_work,
    )
    outcome = predict_ct(request)
    console = Console(width=max(Console().width, 100))
    lm = outcome.prediction.landmarks
    points = Table(title="landmarks (LPS, mm)")
    for col in ("point", "x", "y", "z", "confidence"):
        points.add_column(col, justify="left" if col == "point" else "right")
    for name, (x, y, z) in lm.points.items():
        points.add_row(name, f"{x:.1f}", f"{y:.1f}", f"{z:.1f}", f"{lm.confidence.get(name, 0.0):.2f}")
    for name in lm.missing:
        points.add_row(name, "–", "–", "–", "missing")
    console.print(points)
    console.print(measurement_table(outcome.measurements))
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in outcome.seconds.items() if not k.startswith("model_"))
    console.print(f"wrote {len(outcome.files) + 2} files to {out} ({timing})")
