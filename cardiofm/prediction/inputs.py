"""Where the CT of a prediction comes from: a NIfTI file, a DICOM series folder, or a series in the PACS.

Every route ends in the same place: the series' DICOM files (when there are any: the SEG and SR need them)
and a NIfTI of the series, converted by dcm2niix exactly as preparation converts it. Nothing is written
outside the prediction's work folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cardiofm.contracts.pacs import PacsParams
from cardiofm.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class CtInput:
    """The CT to predict: its NIfTI and, when it came as DICOM, the series' files."""

    nifti: Path
    dicom_files: tuple[Path, ...] = ()


def is_nifti(path: Path) -> bool:
    """Whether ``path`` names a NIfTI file by its suffix."""
    return path.name.endswith(NIFTI_SUFFIXES)


def series_files(folder: Path) -> list[Path]:
    """The DICOM files of the one CT series in ``folder`` (any depth; other files ignored).

    Raises
    ------
    InputDataError
        No CT series, or more than one (saying how many, and what to do).
    """
    from cardiofm.dicom.index import index_folder

    series = [s for study in index_folder(folder).studies for s in study.series if s.modality == "CT"]
    if not series:
        raise InputDataError(f"no CT DICOM files in folder {folder.name}: give a folder holding one CT series")
    if len(series) > 1:
        sizes = ", ".join(str(len(s.files)) for s in series)
        raise InputDataError(
            f"folder {folder.name} holds {len(series)} CT series ({sizes} files): give a folder with exactly one "
            "series, or the series from the PACS with --pacs-series"
        )
    return list(series[0].files)


def convert_dicom(files: list[Path], work: Path, timeout_s: float = 600.0) -> CtInput:
    """Convert the series with dcm2niix (as preparation does) into ``work/native``."""
    from cardiofm.dicom.convert import convert_series

    result = convert_series(files, work / "native", name="image", timeout_s=timeout_s, compress=False)
    logger.info("converted %d DICOM files to %s voxels", len(files), result.shape)
    return CtInput(nifti=work / "native" / "image.nii", dicom_files=tuple(files))


def find_study(source: object, series_uid: str) -> str:
    """Study Instance UID of the series ``series_uid`` in the PACS (searching its CT studies).

    Raises
    ------
    InputDataError
        The PACS has no CT series with this UID.
    """
    for study_uid in source.list_studies("CT"):  # type: ignore[attr-defined]
        if any(s.uid == series_uid for s in source.list_series(study_uid)):  # type: ignore[attr-defined]
            return str(study_uid)
    raise InputDataError(
        f"the PACS at {source.where} has no CT series with the given Series Instance UID; "  # type: ignore[attr-defined]
        "check the UID (copy it from the viewer) and the PACS settings"
    )


def fetch_from_pacs(
    params: PacsParams,
    series_uid: str,
    work: Path,
    *,
    study_uid: str | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Path]:
    """Retrieve one series from the PACS (DICOMweb or DIMSE, as preparation reads it) into ``work/dicom``.

    Raises
    ------
    ConfigError
        No PACS named (``--dicomweb-url`` or ``--dimse``).
    InputDataError
        The series is not in the PACS, or it came back empty.
    """
    from cardiofm.dicom.pacs import open_source

    source = open_source(params, env if env is not None else os.environ)
    if source is None:
        raise ConfigError("--pacs-series needs a PACS: give --dicomweb-url or --dimse")
    study = study_uid or find_study(source, series_uid)
    files = source.fetch_series(study, series_uid, work / "dicom")
    if not files:
        raise InputDataError(f"the PACS at {source.where} returned no instance of the series; check it in the viewer")
    logger.info("retrieved %d instances from %s", len(files), source.where)
    return list(files)


def resolve_input(
    path: Path | None,
    work: Path,
    *,
    pacs: PacsParams | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
) -> CtInput:
    """The CT named by ``--input`` (a NIfTI file or a DICOM folder) or by ``--pacs-series``, ready to predict.

    Raises
    ------
    ConfigError
        Neither or both of an input path and a PACS series.
    InputDataError
        The path does not exist or holds no usable series.
    """
    if (path is None) == (series_uid is None):
        raise ConfigError("give exactly one of --input (a NIfTI file or DICOM series folder) and --pacs-series UID")
    if path is None:
        return convert_dicom(fetch_from_pacs(pacs or PacsParams(), str(series_uid), work, study_uid=study_uid), work)
    if not path.exists():
        raise InputDataError(f"--input {path} does not exist")
    if path.is_file():
        if not is_nifti(path):
            raise InputDataError(
                f"--input {path.name} is a file but not NIfTI (.nii, .nii.gz): give a NIfTI file or a folder with "
                "the series' DICOM files"
            )
        return CtInput(nifti=path)
    return convert_dicom(series_files(path), work)
