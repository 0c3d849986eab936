"""PACS sources: copy remote studies into the local-folder layout the rest of the pipeline indexes.

A source (:class:`DicomWebSource` over QIDO-RS/WADO-RS, :class:`DimseSource` over C-FIND and C-GET or
C-MOVE) lists studies and series and fetches one series into a folder. :func:`mirror_study` keeps the
series worth converting (modality, instance count; decided on metadata, before any download) and writes
each into its own folder; :func:`mirror_all` does so for every study, isolating failures per study.

File and folder names carry no UIDs or identifiers (``00001.dcm``, series number, hashed study key);
logs show counts and :func:`~cardiofm.dicom.index.hashed` UIDs only.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
from pynetdicom.association import Association

from cardiofm.contracts.pacs import PacsParams
from cardiofm.dicom.index import hashed
from cardiofm.errors import CardioFMError, ConfigError, ExternalToolError, InputDataError

logger = logging.getLogger(__name__)

_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve - FIND
_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
_GET = "1.2.840.10008.5.1.4.1.2.2.3"
#: Storage SOP classes accepted on retrieval: CT, enhanced/legacy CT, MR, enhanced MR, secondary capture.
STORAGE_SOP_CLASSES = tuple(f"1.2.840.10008.5.1.4.1.1.{s}" for s in ("2", "2.1", "2.2", "4", "4.1", "7"))
_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", *ALL_TRANSFER_SYNTAXES[2:]]
_PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True, slots=True)
class RemoteSeries:
    """One series as the PACS describes it; ``n_instances`` is None when the PACS does not say."""

    uid: str
    modality: str
    description: str
    number: int | None
    n_instances: int | None


class PacsSource(Protocol):
    """What :func:`mirror_study` needs from a PACS."""

    @property
    def where(self) -> str:
        """Where the PACS is (URL or host:port), for messages; never contains credentials."""

    def list_studies(self, modality: str = "CT") -> list[str]:
        """Study Instance UIDs of the studies holding a series of ``modality``."""

    def list_series(self, study_uid: str) -> list[RemoteSeries]:
        """The series of one study; empty when the study is unknown."""

    def fetch_series(self, study_uid: str, series_uid: str, out_dir: Path) -> list[Path]:
        """Write every instance of a series into ``out_dir`` as ``00001.dcm``, ``00002.dcm``, ..."""


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _json(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


class DicomWebSource:
    """A DICOMweb server (e.g. Orthanc's ``/dicom-web``), with optional HTTP basic authentication."""

    def __init__(
        self, url: str, username: str | None = None, password: str | None = None, timeout_s: float = 60
    ) -> None:
        if (username is None) != (password is None):
            raise ConfigError("DICOMweb: give both a username and a password, or neither")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"DICOMweb URL must start with http:// or https:// and name a host, got {url!r}")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        if username is not None and password is not None:
            session = create_session_from_user_pass(username, password)
        else:
            session = requests.Session()
            if parts.username is not None:
                session.auth = (parts.username, parts.password or "")
        self._client = DICOMwebClient(url=self.url, session=session, timeout=timeout_s)
        self._client.set_http_retry_params(retry=False)  # a down server fails fast; mirror_all isolates it

    @property
    def where(self) -> str:
        """The server URL without credentials."""
        return self.url

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in (401, 403):
                raise ExternalToolError(
                    f"DICOMweb server {self.url} refused the credentials (HTTP {code}) while {what}: "
                    "check the username and password (or token) configured for this PACS"
                ) from None
            raise ExternalToolError(f"DICOMweb server {self.url} answered HTTP {code} while {what}") from None
        except requests.RequestException as exc:
            raise ExternalToolError(
                f"cannot reach DICOMweb server {self.url} while {what} ({type(exc).__name__}): check the URL, "
                "that the server runs, and the network path (proxy, firewall, DNS)"
            ) from None

    def list_studies(self, modality: str = "CT") -> list[str]:
        """QIDO-RS study search on the exact ModalitiesInStudy value (no wildcards, see module notes)."""
        with self._errors("searching studies"):
            items = self._client.search_for_studies(
                fields=["StudyInstanceUID"], search_filters={"ModalitiesInStudy": modality}
            )
        uids = [str(u) for u in (_json(i, "0020000D") for i in items) if u]
        return list(dict.fromkeys(uids))

    def list_series(self, study_uid: str) -> list[RemoteSeries]:
        """QIDO-RS series search within one study."""
        fields = ["Modality", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances"]
        with self._errors(f"listing series of study {hashed(study_uid)}"):
            items = self._client.search_for_series(study_instance_uid=study_uid, fields=fields)
        return [
            RemoteSeries(
                uid=str(_json(i, "0020000E")),
                modality=str(_json(i, "00080060") or ""),
                description=str(_json(i, "0008103E") or ""),
                number=_int(_json(i, "00200011")),
                n_instances=_int(_json(i, "00201209")),
            )
            for i in items
            if _json(i, "0020000E")
        ]

    def fetch_series(self, study_uid: str, series_uid: str, out_dir: Path) -> list[Path]:
        """WADO-RS series retrieval, streamed instance by instance."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        with self._errors(f"retrieving series {hashed(series_uid)}"):
            for n, ds in enumerate(self._client.iter_series(study_uid, series_uid), start=1):
                path = out_dir / f"{n:05d}.dcm"
                try:
                    ds.save_as(path, enforce_file_format=True)
                except (ValueError, AttributeError, TypeError) as exc:
                    raise InputDataError(
                        f"instance {n} of series {hashed(series_uid)} cannot be saved: {exc}"
                    ) from None
                paths.append(path)
        return paths


class _Writer:
    """C-STORE handler writing each received instance, as received, to ``out_dir/<n:05d>.dcm``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir, self.paths, self.errors = out_dir, list[Path](), list[str]()
        self._lock = threading.Lock()

    def handle(self, event: Any) -> int:
        with self._lock:
            path = self.out_dir / f"{len(self.paths) + 1:05d}.dcm"
            try:
                path.write_bytes(event.encoded_dataset(include_meta=True))
            except OSError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc.strerror}")
                return 0xA700
            self.paths.append(path)
            return 0x0000


class DimseSource:
    """A DICOM node reached over DIMSE: C-FIND (Study Root) plus C-GET or C-MOVE.

    C-GET receives instances over the same association; C-MOVE makes the PACS connect back to a
    Storage SCP this source runs during each fetch on ``local_address:local_port`` with AE title
    ``move_destination_ae`` (default ``calling_ae``), which the PACS must know.
    """

    def __init__(
        self,
        host: str,
        port: int,
        called_ae: str,
        calling_ae: str = "CARDIOFM",
        mode: Literal["c-get", "c-move"] = "c-get",
        move_destination_ae: str | None = None,
        local_port: int | None = None,
        *,
        local_address: str = "0.0.0.0",
        timeout_s: float = 60,
    ) -> None:
        if mode not in ("c-get", "c-move"):
            raise ConfigError(f"DIMSE mode must be 'c-get' or 'c-move', got {mode!r}")
        if mode == "c-move" and local_port is None:
            raise ConfigError("DIMSE mode c-move needs local_port: the port the PACS sends the instances to")
        for name, title in (("called", called_ae), ("calling", calling_ae), ("move destination", move_destination_ae)):
            if title is not None and not 0 < len(title.strip()) <= 16:
                raise ConfigError(f"{name} AE title must have 1 to 16 characters, got {title!r}")
        self.host, self.port, self.called_ae, self.calling_ae, self.mode = host, port, called_ae, calling_ae, mode
        self.move_destination_ae = move_destination_ae or calling_ae
        self.local_port, self.local_address, self.timeout_s = local_port, local_address, timeout_s

    @property
    def where(self) -> str:
        """host:port and AE titles."""
        return f"{self.host}:{self.port} (called AE {self.called_ae}, calling AE {self.calling_ae})"

    def _ae(self, title: str) -> AE:
        ae = AE(ae_title=title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        return ae

    @contextmanager
    def _associate(self, model: str, writer: _Writer | None = None) -> Iterator[Association]:
        ae = self._ae(self.calling_ae)
        ae.add_requested_context(model)
        roles: list[Any] = []
        handlers: list[Any] = []
        if writer is not None:  # C-GET: we act as Storage SCP on this association
            for uid in STORAGE_SOP_CLASSES:
                ae.add_requested_context(uid, _SYNTAXES)
            roles = [build_role(uid, scp_role=True) for uid in STORAGE_SOP_CLASSES]
            handlers = [(evt.EVT_C_STORE, writer.handle)]
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae, ext_neg=roles, evt_handlers=handlers)
        if not assoc.is_established:
            reason = "rejected the association" if assoc.is_rejected else "could not be reached or aborted"
            raise ExternalToolError(
                f"DICOM node {self.where} {reason}: check host and port, that the PACS runs, the network/firewall, "
                f"the called AE title, and that AE title {self.calling_ae} is registered at the PACS"
            )
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _check(self, status: Dataset, op: str) -> int:
        if not status or "Status" not in status:
            raise ExternalToolError(
                f"{op} at {self.where}: no answer (association aborted or timed out): the PACS may refuse this "
                f"operation from AE title {self.calling_ae}; check that it is registered (and allowed) at the PACS"
            )
        return int(status.Status)

    def _find(self, level: str, keys: dict[str, str]) -> list[Dataset]:
        query = Dataset()
        query.QueryRetrieveLevel = level
        for keyword, value in keys.items():
            setattr(query, keyword, value)
        found: list[Dataset] = []
        with self._associate(_FIND) as assoc:
            for status, identifier in assoc.send_c_find(query, _FIND):
                code = self._check(status, "C-FIND")
                if code in _PENDING and identifier is not None:
                    found.append(identifier)
                elif code != 0x0000:
                    raise ExternalToolError(
                        f"C-FIND at {self.where} failed with status 0x{code:04X}: check that AE title "
                        f"{self.calling_ae} may query this PACS"
                    )
        return found

    def list_studies(self, modality: str = "CT") -> list[str]:
        """C-FIND at STUDY level on the exact ModalitiesInStudy value."""
        found = self._find("STUDY", {"StudyInstanceUID": "", "ModalitiesInStudy": modality})
        return list(dict.fromkeys(str(ds.StudyInstanceUID) for ds in found if ds.get("StudyInstanceUID")))

    def list_series(self, study_uid: str) -> list[RemoteSeries]:
        """C-FIND at SERIES level within one study."""
        keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "Modality": "", "SeriesDescription": ""}
        keys |= {"SeriesNumber": "", "NumberOfSeriesRelatedInstances": ""}
        return [
            RemoteSeries(
                uid=str(ds.SeriesInstanceUID),
                modality=str(ds.get("Modality") or ""),
                description=str(ds.get("SeriesDescription") or ""),
                number=_int(ds.get("SeriesNumber")),
                n_instances=_int(ds.get("NumberOfSeriesRelatedInstances")),
            )
            for ds in self._find("SERIES", keys)
            if ds.get("SeriesInstanceUID")
        ]

    def fetch_series(self, study_uid: str, series_uid: str, out_dir: Path) -> list[Path]:
        """C-GET (or C-MOVE to a temporary Storage SCP) of one series."""
        out_dir.mkdir(parents=True, exist_ok=True)
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID, query.SeriesInstanceUID = study_uid, series_uid
        writer = _Writer(out_dir)
        op = self.mode.upper()
        if self.mode == "c-get":
            with self._associate(_GET, writer) as assoc:
                codes = [self._check(status, op) for status, _ in assoc.send_c_get(query, _GET)]
        else:
            scp = self._ae(self.move_destination_ae)
            for uid in STORAGE_SOP_CLASSES:
                scp.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
            address = (self.local_address, int(self.local_port or 0))
            try:
                server = scp.start_server(address, block=False, evt_handlers=[(evt.EVT_C_STORE, writer.handle)])
            except OSError as exc:
                raise ExternalToolError(
                    f"cannot listen on {address[0]}:{address[1]} for C-MOVE ({exc.strerror}): choose a free local_port"
                ) from None
            try:
                with self._associate(_MOVE) as assoc:
                    codes = [self._check(s, op) for s, _ in assoc.send_c_move(query, self.move_destination_ae, _MOVE)]
            finally:
                if server is not None:
                    server.shutdown()
        final = next((c for c in reversed(codes) if c not in _PENDING), None)
        if writer.errors:
            raise ExternalToolError(f"{op}: {len(writer.errors)} instance(s) could not be written: {writer.errors[0]}")
        if final != 0x0000 or not writer.paths:
            hint = f"; check that {self.move_destination_ae} is registered at the PACS" if self.mode == "c-move" else ""
            status = "no final status" if final is None else f"status 0x{final:04X}"
            raise ExternalToolError(
                f"{op} of series {hashed(series_uid)} from {self.where}: {status}, {len(writer.paths)} instance(s)"
                f" received{hint}"
            )
        return sorted(writer.paths)


@dataclass(frozen=True, slots=True)
class SkippedSeries:
    """A series left out of the mirror, and why."""

    series: RemoteSeries
    reason: str


@dataclass(frozen=True, slots=True)
class MirroredSeries:
    """A series written to ``folder`` (``n_files`` instances)."""

    series: RemoteSeries
    folder: Path
    n_files: int


@dataclass(frozen=True, slots=True)
class MirrorResult:
    """One study copied into ``out_dir``."""

    study_uid: str
    out_dir: Path
    mirrored: tuple[MirroredSeries, ...]
    skipped: tuple[SkippedSeries, ...]

    @property
    def key(self) -> str:
        """Loggable key of the study."""
        return hashed(self.study_uid)


@dataclass(frozen=True, slots=True)
class FailedStudy:
    """A study that could not be mirrored, and why."""

    study_uid: str
    reason: str


@dataclass(frozen=True, slots=True)
class MirrorAllResult:
    """Every study listed: those mirrored and those that failed (``n_listed = mirrored + failed``)."""

    studies: tuple[MirrorResult, ...]
    failed: tuple[FailedStudy, ...]

    @property
    def n_listed(self) -> int:
        """Studies the source listed."""
        return len(self.studies) + len(self.failed)


def _folder_names(series: Sequence[RemoteSeries]) -> list[str]:
    numbers = [s.number for s in series]
    return [
        str(s.number) if s.number is not None and numbers.count(s.number) == 1 else f"index-{i + 1:03d}"
        for i, s in enumerate(series)
    ]


def mirror_study(
    source: PacsSource, study_uid: str, out_dir: Path, *, min_instances: int = 1, modalities: Sequence[str] = ("CT",)
) -> MirrorResult:
    """Copy the series of one study with a wanted modality and ``>= min_instances`` instances.

    Each goes to ``out_dir/<series number>/`` (``index-<n>`` when the number is missing or repeated),
    written to a hidden ``.partial-`` folder first and renamed when complete; an existing folder of
    the same name is replaced. Series are skipped on metadata before any download, and again when
    fewer instances arrive than ``min_instances``. Raises :class:`InputDataError` when the PACS knows
    no series of the study, and :class:`ExternalToolError` when a download fails.
    """
    if min_instances < 1:
        raise ConfigError(f"min_instances must be at least 1, got {min_instances}")
    series = source.list_series(study_uid)
    if not series:
        raise InputDataError(f"study {hashed(study_uid)} not found at {source.where} (no series listed)")
    wanted: list[RemoteSeries] = []
    skipped: list[SkippedSeries] = []
    for s in series:
        if s.modality not in modalities:
            skipped.append(SkippedSeries(s, f"modality {s.modality or 'missing'} not in {', '.join(modalities)}"))
        elif s.n_instances is not None and s.n_instances < min_instances:
            skipped.append(SkippedSeries(s, f"{s.n_instances} instance(s), fewer than min_instances={min_instances}"))
        else:
            wanted.append(s)
    out_dir.mkdir(parents=True, exist_ok=True)
    mirrored: list[MirroredSeries] = []
    for s, name in zip(wanted, _folder_names(wanted), strict=True):
        partial, target = out_dir / f".partial-{name}", out_dir / name
        shutil.rmtree(partial, ignore_errors=True)
        try:
            files = source.fetch_series(study_uid, s.uid, partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if len(files) < min_instances:
            shutil.rmtree(partial, ignore_errors=True)
            skipped.append(SkippedSeries(s, f"{len(files)} instance(s) received, fewer than {min_instances}"))
            continue
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        mirrored.append(MirroredSeries(s, target, len(files)))
    logger.info(
        "study %s from %s: %d series mirrored (%d files), %d skipped",
        *(hashed(study_uid), source.where, len(mirrored), sum(m.n_files for m in mirrored), len(skipped)),
    )
    return MirrorResult(study_uid, out_dir, tuple(mirrored), tuple(skipped))


def study_folder(out_root: Path, study_uid: str) -> Path:
    """Where :func:`mirror_all` writes a study: ``out_root/study-<hashed uid>``."""
    return out_root / f"study-{hashed(study_uid)}"


def mirror_all(
    source: PacsSource,
    out_root: Path,
    *,
    modality: str = "CT",
    min_instances: int = 1,
    modalities: Sequence[str] | None = None,
) -> MirrorAllResult:
    """Mirror every study holding a ``modality`` series into :func:`study_folder` folders.

    A study that fails (unknown at the PACS, download error, disk error) is recorded in ``failed``
    with its reason and its folder removed; the others continue. Listing errors are raised.
    """
    results: list[MirrorResult] = []
    failed: list[FailedStudy] = []
    wanted = tuple(modalities or (modality,))
    for uid in source.list_studies(modality):
        folder = study_folder(out_root, uid)
        try:
            results.append(mirror_study(source, uid, folder, min_instances=min_instances, modalities=wanted))
        except (CardioFMError, OSError) as exc:
            logger.warning("study %s failed: %s", hashed(uid), exc)
            failed.append(FailedStudy(uid, str(exc)))
            shutil.rmtree(folder, ignore_errors=True)
    counts = (len(results), len(results) + len(failed), source.where, len(failed))
    logger.info("mirrored %d of %d studies from %s; %d failed", *counts)
    return MirrorAllResult(tuple(results), tuple(failed))


def open_source(params: PacsParams, env: Mapping[str, str]) -> PacsSource | None:
    """The PACS ``params`` name (None: the site's local folder); the DICOMweb password is read from ``env``.

    Raises
    ------
    ConfigError
        Contradictory settings, or a user without its password variable.
    """
    params.check()
    if params.dicomweb_url:
        password = env.get(params.pacs_password_env) if params.pacs_user else None
        if params.pacs_user and password is None:
            raise ConfigError(
                f"--pacs-user is set but the environment variable {params.pacs_password_env} (the password) is not; "
                "export it, or name another variable with --pacs-password-env (PACS_PASSWORD_ENV)"
            )
        return DicomWebSource(params.dicomweb_url, username=params.pacs_user, password=password)
    if params.dimse:
        host, port = params.dimse_host_port
        return DimseSource(
            host,
            port,
            params.called_ae,
            calling_ae=params.calling_ae,
            mode="c-move" if params.dimse_mode == "c-move" else "c-get",
            move_destination_ae=params.move_ae,
            local_port=params.move_port,
            local_address=params.listen_address,
        )
    return None
