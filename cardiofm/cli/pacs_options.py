"""The PACS options every command that talks to a PACS takes (``prepare``, ``predict``, ``send``), defined once.

Each is a Typer option default; the commands pass the values into :class:`~cardiofm.contracts.pacs.PacsParams`.
"""

from __future__ import annotations

import typer

DICOMWEB_URL = typer.Option(
    None, "--dicomweb-url", help="DICOMweb PACS base URL (QIDO-RS/WADO-RS to read, STOW-RS to store)."
)
DIMSE = typer.Option(None, "--dimse", help="DIMSE PACS at HOST:PORT (C-FIND and C-GET or C-MOVE to read, C-STORE).")
CALLED_AE = typer.Option("ORTHANC", "--called-ae", help="AE title of the DIMSE PACS.")
CALLING_AE = typer.Option("CARDIOFM", "--calling-ae", help="Our AE title (must be registered at the PACS).")
PACS_USER = typer.Option(None, "--pacs-user", help="DICOMweb user name.")
PACS_PASSWORD_ENV = typer.Option(
    "CARDIOFM_PACS_PASSWORD", "--pacs-password-env", help="Environment variable holding the DICOMweb password."
)
