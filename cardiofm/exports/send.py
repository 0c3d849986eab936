"""Send DICOM files (a CT series, the SEG and SR exports) to a PACS: DICOMweb STOW-RS or DIMSE C-STORE.

The PACS is named by the same :class:`~cardiofm.contracts.pacs.PacsParams` that ``cardiofm prepare`` reads
from, and opened by the same :func:`~cardiofm.dicom.pacs.open_source`: the same URL and AE-title checks, the
password read from the environment variable ``pacs_password_env`` names, HTTP basic authentication, the same
timeouts and the same messages for an unreachable PACS or refused credentials. Only the storing is added
here. Messages and logs name counts, SOP classes, status codes and hashed UIDs, never patient attributes or
file paths (which may carry a patient's name).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cardiofm.contracts.pacs import PacsParams
from cardiofm.dicom.index import hashed
from cardiofm.dicom.pacs import DicomWebSource, DimseSource, open_source
from cardiofm.errors import ConfigError, ExternalToolError, InputDataError

logger = logging.getLogger(__name__)

#: Instances per STOW-RS request (bounds the size of one multipart body).
STOW_BATCH = 32
#: C-STORE statuses that mean "stored" (success, and the warnings coercion / elements discarded / not checked).
_STORED = (0x0000, 0xB000, 0xB006, 0xB007)
#: Presentation contexts one association may request.
_MAX_CONTEXTS = 128


@dataclass(frozen=True, slots=True)
class SendResult:
    """What :func:`send_files` stored: ``n_instances`` instances of ``n_series`` series at ``where``."""

    n_instances: int
    n_series: int
    where: str


def dicom_files(paths: Sequence[Path]) -> list[Path]:
    """Files to send: each file given, and every file under each folder given (sorted, hidden ones skipped).

    Raises
    ------
    InputDataError
        If a path does not exist or nothing is found.
    """
    found: list[Path] = []
    for n, path in enumerate(paths, start=1):
        p = Path(path)
        if p.is_dir():
            found.extend(f for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            found.append(p)
        else:
            raise InputDataError(f"input {n} of {len(paths)} does not exist: check the path")
    if not found:
        raise InputDataError("no files to send: give DICOM files or folders holding them")
    return found


def _read(path: Path, n: int, total: int, *, header_only: bool = False) -> Dataset:
    try:
        return dcmread(path, stop_before_pixels=header_only)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise InputDataError(
            f"file {n} of {total} is not a readable DICOM file ({type(exc).__name__}): send DICOM files only"
        ) from None


def _datasets(paths: Sequence[Path]) -> Iterator[Dataset]:
    for n, path in enumerate(paths, start=1):
        yield _read(path, n, len(paths))


def _failed_sops(response: Dataset) -> list[str]:
    """``SOP class name (reason 0x....)`` of every instance a STOW-RS response lists as failed."""
    failed = []
    for item in response.get("FailedSOPSequence", []):
        reason = item.get("FailureReason")
        sop_class = UID(str(item.get("ReferencedSOPClassUID", ""))).name or "unknown SOP class"
        failed.append(f"{sop_class} (reason 0x{int(reason):04X})" if reason is not None else sop_class)
    return failed


def _stow(source: DicomWebSource, paths: Sequence[Path]) -> None:
    # the source's own client: the session with its authentication, timeout and retry settings
    client = source._client
    for start in range(0, len(paths), STOW_BATCH):
        batch = [_read(p, start + n, len(paths)) for n, p in enumerate(paths[start : start + STOW_BATCH], start=1)]
        what = f"storing instances {start + 1}-{start + len(batch)} of {len(paths)}"
        with source._errors(what):
            try:
                response = client.store_instances(batch)
            except requests.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else 0
                if code in (400, 409, 415):
                    raise ExternalToolError(
                        f"DICOMweb server {source.where} rejected instances while {what} (HTTP {code}): check that "
                        "it accepts these SOP classes and that the instances are valid (its log names the reason)"
                    ) from None
                raise
        failed = _failed_sops(response)
        if failed:
            raise ExternalToolError(
                f"DICOMweb server {source.where} rejected {len(failed)} instance(s) while {what}: {', '.join(failed)}; "
                "check that it accepts these SOP classes (its log names the reason)"
            )


def _contexts(paths: Sequence[Path]) -> dict[str, list[str]]:
    """Transfer syntaxes to propose per SOP class: each file's own, plus the uncompressed ones."""
    contexts: dict[str, list[str]] = {}
    for n, path in enumerate(paths, start=1):
        ds = _read(path, n, len(paths), header_only=True)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
        wanted = contexts.setdefault(str(ds.SOPClassUID), [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        if syntax not in wanted:
            wanted.append(syntax)
    if len(contexts) > _MAX_CONTEXTS:
        raise InputDataError(f"{len(contexts)} SOP classes in one send; send at most {_MAX_CONTEXTS} at once")
    return contexts


def _c_store(source: DimseSource, paths: Sequence[Path]) -> None:
    ae = source._ae(source.calling_ae)  # the source's AE settings: titles and timeouts
    for sop_class, syntaxes in _contexts(paths).items():
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate(source.host, source.port, ae_title=source.called_ae)
    if not assoc.is_established:
        reason = "rejected the association" if assoc.is_rejected else "could not be reached or aborted"
        raise ExternalToolError(
            f"DICOM node {source.where} {reason}: check host and port, that the PACS runs, the network/firewall, "
            f"the called AE title, and that AE title {source.calling_ae} is registered at the PACS"
        )
    try:
        for n, ds in enumerate(_datasets(paths), start=1):
            sop_class = UID(str(ds.SOPClassUID)).name
            try:
                status = assoc.send_c_store(ds)
            except ValueError:
                raise ExternalToolError(
                    f"DICOM node {source.where} accepts no presentation context for {sop_class} (instance {n} of "
                    f"{len(paths)}): ask the PACS administrator to accept this SOP class from {source.calling_ae}"
                ) from None
            if not status or "Status" not in status:
                raise ExternalToolError(
                    f"C-STORE at {source.where}: no answer for instance {n} of {len(paths)} (association aborted or "
                    "timed out): check that the PACS accepts storage from this AE title"
                )
            code = int(status.Status)
            if code not in _STORED:
                raise ExternalToolError(
                    f"DICOM node {source.where} rejected instance {n} of {len(paths)} ({sop_class}, "
                    f"SOP instance {hashed(str(ds.SOPInstanceUID))}) with status 0x{code:04X}: check that it accepts "
                    f"this SOP class and storage from AE title {source.calling_ae} (its log names the reason)"
                )
    finally:
        if assoc.is_established:
            assoc.release()


def send_files(paths: Sequence[Path], params: PacsParams, env: Mapping[str, str]) -> SendResult:
    """Store DICOM files in the PACS ``params`` names, over STOW-RS (``dicomweb_url``) or C-STORE (``dimse``).

    Parameters
    ----------
    paths:
        DICOM files, sent in this order (see :func:`dicom_files` for folders).
    params:
        The PACS, as ``cardiofm prepare`` takes it; the retrieval options (``dimse_mode``, ``move_*``) do not
        apply to sending.
    env:
        Environment holding the DICOMweb password (the variable ``params.pacs_password_env``).

    Returns
    -------
    SendResult

    Raises
    ------
    ConfigError
        If no PACS (or contradictory settings) is given, or the password variable is not set.
    InputDataError
        If a file is not readable DICOM.
    ExternalToolError
        If the PACS cannot be reached, refuses the credentials or the association, or rejects an instance.
    """
    files = [Path(p) for p in paths]
    if not files:
        raise InputDataError("no files to send")
    source = open_source(params, env)
    if source is None:
        raise ConfigError("name the PACS to send to: --dicomweb-url (STOW-RS) or --dimse HOST:PORT (C-STORE)")
    headers = (_read(p, n, len(files), header_only=True) for n, p in enumerate(files, start=1))
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in headers}
    if isinstance(source, DicomWebSource):
        _stow(source, files)
    elif isinstance(source, DimseSource):
        _c_store(source, files)
    logger.info("stored %d instance(s) of %d series at %s", len(files), len(series), source.where)
    return SendResult(n_instances=len(files), n_series=len(series), where=source.where)
