"""``cardiofm send``: store DICOM files (a series, the SEG and SR exports) in a PACS over STOW-RS or C-STORE."""

from __future__ import annotations

from pathlib import Path

import typer


def send(
    inputs: list[Path] = typer.Argument(..., help="DICOM files, or folders whose files are all sent."),
    dicomweb_url: str | None = typer.Option(
        None, "--dicomweb-url", help="Send to a DICOMweb PACS (STOW-RS) at this base URL."
    ),
    dimse: str | None = typer.Option(None, "--dimse", help="Send to a DIMSE PACS at HOST:PORT (C-STORE)."),
    called_ae: str = typer.Option("ORTHANC", "--called-ae", help="AE title of the DIMSE PACS."),
    calling_ae: str = typer.Option("CARDIOFM", "--calling-ae", help="Our AE title (must be registered at the PACS)."),
    pacs_user: str | None = typer.Option(None, "--pacs-user", help="DICOMweb user name."),
    pacs_password_env: str = typer.Option(
        "CARDIOFM_PACS_PASSWORD", "--pacs-password-env", help="Environment variable holding the DICOMweb password."
    ),
) -> None:
    """Send DICOM files to a PACS; the PACS options are those of cardiofm prepare."""
    import os

    from rich.console import Console

    from cardiofm.contracts.pacs import PacsParams
    from cardiofm.exports.send import dicom_files, send_files

    pacs = PacsParams(
        dicomweb_url=dicomweb_url,
        dimse=dimse,
        called_ae=called_ae,
        calling_ae=calling_ae,
        pacs_user=pacs_user,
        pacs_password_env=pacs_password_env,
    )
    files = dicom_files(inputs)
    err = Console(stderr=True)
    with err.status(f"sending {len(files)} file(s)"):
        result = send_files(files, pacs, os.environ)
    Console().print(f"stored {result.n_instances} instance(s) of {result.n_series} series at {result.where}")
