"""``cardiofm send``: store DICOM files (a series, the SEG and SR exports) in a PACS over STOW-RS or C-STORE."""

from __future__ import annotations

from pathlib import Path

import typer

from cardiofm.cli.pacs_options import CALLED_AE, CALLING_AE, DICOMWEB_URL, DIMSE, PACS_PASSWORD_ENV, PACS_USER


def send(
    inputs: list[Path] = typer.Argument(..., help="DICOM files, or folders whose files are all sent."),
    dicomweb_url: str | None = DICOMWEB_URL,
    dimse: str | None = DIMSE,
    called_ae: str = CALLED_AE,
    calling_ae: str = CALLING_AE,
    pacs_user: str | None = PACS_USER,
    pacs_password_env: str = PACS_PASSWORD_ENV,
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
