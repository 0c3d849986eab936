"""Index a folder tree of DICOM files into studies and series, reading headers only.

Any layout works: nested ``patient/study/series`` folders, one flat folder per study, files of several
series mixed, any file names. Files without the DICOM preamble are ignored (debug log); files that
look like DICOM but cannot be used (truncated header or pixel data, missing UIDs, duplicates) become
:class:`IndexProblem` entries, never exceptions.

Headers are read with ``stop_before_pixels`` and ``specific_tags``; the pixel data's element header is
then checked against the file size, which catches copies cut off during transfer.

Paths and UIDs can name patients, so logs show :func:`hashed` keys only.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from cardiofm.errors import InputDataError

logger = logging.getLogger(__name__)

_TAGS = [
    *("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber"),
    *("InstanceNumber", "ImageType", "SliceThickness", "ImageOrientationPatient", "ImagePositionPatient"),
    *("PixelSpacing", "NominalPercentageOfCardiacPhase", "TriggerTime", "HeartRate", "ContrastBolusAgent"),
    *("ConvolutionKernel", "Rows", "Columns", "NumberOfFrames"),
]
_DICOMDIR_UID = "1.2.840.10008.1.3.10"
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: The VRs an explicit-VR pixel data element may carry.
_PIXEL_VRS = frozenset({b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN"})
#: Largest difference between two files' direction cosines still counted as the same orientation.
_ORIENTATION_TOL = 1e-3
#: Phases (percent) closer than this count as one phase.
_PHASE_TOL = 0.5


def hashed(text: str) -> str:
    """A short, stable key for a UID or path, safe to log (SHA-256, first 12 hex digits)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def file_key(root: Path, path: Path) -> str:
    """The key a file is reported under: :func:`hashed` of its POSIX path relative to ``root``."""
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix()
    return hashed(rel)


@dataclass(frozen=True, slots=True)
class IndexProblem:
    """A DICOM file that could not be indexed, and why."""

    path: Path
    problem: str


@dataclass(frozen=True, slots=True)
class SeriesIndex:
    """Header facts of one series. Files are sorted by position along the slice normal.

    Series-level facts come from the first file in path order; ``inconsistencies`` notes where files
    disagree (orientation, cardiac phase). ``positions_mm`` are the files' positions projected on the
    normal, in file order, or None when a file lacks ImagePositionPatient or ImageOrientationPatient.
    """

    study_uid: str
    series_uid: str
    modality: str
    description: str
    number: int | None
    image_type: tuple[str, ...]
    slice_thickness_mm: float | None
    orientation: tuple[float, ...] | None
    pixel_spacing_mm: tuple[float, float] | None
    rows: int | None
    columns: int | None
    frames: int
    phase_percent: float | None
    trigger_time_ms: float | None
    heart_rate_bpm: float | None
    contrast_agent: str | None
    kernel: str
    files: tuple[Path, ...]
    positions_mm: tuple[float, ...] | None
    inconsistencies: tuple[str, ...] = ()

    @property
    def normal(self) -> tuple[float, float, float] | None:
        """Unit slice normal (row × column direction), or None without a valid orientation."""
        return _normal(self.orientation)


@dataclass(frozen=True, slots=True)
class StudyIndex:
    """All series of one study found under the root, ordered by series number then UID."""

    study_uid: str
    series: tuple[SeriesIndex, ...]

    @property
    def key(self) -> str:
        """Loggable key of the study."""
        return hashed(self.study_uid)


@dataclass(frozen=True, slots=True)
class FolderIndex:
    """Everything found under ``root``: studies, unusable DICOM files and the count of other files."""

    root: Path
    studies: tuple[StudyIndex, ...]
    problems: tuple[IndexProblem, ...]
    ignored_files: int


@dataclass(frozen=True, slots=True)
class _FileFacts:
    path: Path
    sop_uid: str
    study_uid: str
    series_uid: str
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    instance: int | None
    phase: float | None


def _float(ds: Any, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        if isinstance(value, MultiValue | list | tuple):
            value = value[0] if len(value) else None
        if value is None or value == "":
            return None
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _floats(ds: Any, keyword: str, n: int) -> tuple[float, ...] | None:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _int(ds: Any, keyword: str) -> int | None:
    v = _float(ds, keyword)
    return int(v) if v is not None else None


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return "\\".join(str(v) for v in value)
    except TypeError:
        return str(value)


def _normal(orientation: tuple[float, ...] | None) -> tuple[float, float, float] | None:
    if orientation is None:
        return None
    r, c = orientation[:3], orientation[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    length = math.sqrt(sum(v * v for v in n))
    if length < 1e-6:
        return None
    return (n[0] / length, n[1] / length, n[2] / length)


def _same_orientation(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= _ORIENTATION_TOL


def _pixels_truncated(fp: Any, ds: Any, size: int) -> bool:
    """True when the pixel data element (at the reader's stop position) runs past the end of the file."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not ts.is_little_endian or ts.is_deflated:
        return False  # a deflated data set's offsets are in the inflated stream, not in the file
    start = fp.tell()
    head = fp.read(12)
    if not head:  # the file ends where pixel data would start: truncated if it is an image
        return bool("Rows" in ds)
    if head[:4] != _PIXEL_DATA_TAG:
        return False  # not (integer) pixel data: nothing to check
    if len(head) < 8:
        return True
    if ts.is_implicit_VR or head[4:6] not in _PIXEL_VRS:  # files written implicit despite their meta
        length = int(struct.unpack("<I", head[4:8])[0])
        header = 8
    else:
        if len(head) < 12:
            return True
        length = int(struct.unpack("<I", head[8:12])[0])
        header = 12
    return length != _UNDEFINED_LENGTH and start + header + length > size


def _read(root: Path, path: Path, ignored: list[Path], problems: list[IndexProblem]) -> tuple[_FileFacts, Any] | None:
    """The facts of one file and its header dataset; None (and a note) for anything unusable."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_TAGS)
            truncated = _pixels_truncated(fp, ds, size)
    except InvalidDicomError:
        logger.debug("ignoring non-DICOM file %s (%s)", file_key(root, path), path.suffix or "no suffix")
        ignored.append(path)
        return None
    except Exception as exc:  # pydicom raises many kinds on corrupt files; none may stop the scan
        problems.append(IndexProblem(path, f"unreadable DICOM ({type(exc).__name__})"))
        return None
    if getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None) == _DICOMDIR_UID:
        logger.debug("ignoring DICOMDIR %s", file_key(root, path))
        ignored.append(path)
        return None
    study, series, sop = (_text(ds, k).strip() for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
    if not study or not series:
        problems.append(IndexProblem(path, "truncated or incomplete header: no study/series UID"))
        return None
    if truncated:
        problems.append(IndexProblem(path, "truncated file: pixel data runs past the end of the file"))
        return None
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    position = _floats(ds, "ImagePositionPatient", 3)
    facts = _FileFacts(
        path=path,
        sop_uid=sop,
        study_uid=study,
        series_uid=series,
        orientation=orientation,
        position=position,
        instance=_int(ds, "InstanceNumber"),
        phase=_float(ds, "NominalPercentageOfCardiacPhase"),
    )
    return facts, ds


def _build_series(files: list[_FileFacts], ds: Any) -> SeriesIndex:
    """A series from its files (in path order) and the header of the first of them."""
    first = files[0]
    notes: list[str] = []
    if any(not _same_orientation(f.orientation, first.orientation) for f in files):
        notes.append("image orientation differs between files")
    phases = sorted({round(f.phase / _PHASE_TOL) * _PHASE_TOL for f in files if f.phase is not None})
    if len(phases) > 1:
        notes.append(f"{len(phases)} cardiac phases in one series ({', '.join(f'{p:g}%' for p in phases)})")
    normal = _normal(first.orientation)
    positions: list[float] | None = None
    located = [f.position for f in files if f.position is not None]
    if normal is not None and len(located) == len(files):
        proj = [sum(p * n for p, n in zip(pos, normal, strict=True)) for pos in located]
        order = sorted(range(len(files)), key=lambda i: (proj[i], files[i].instance or 0, str(files[i].path)))
        files = [files[i] for i in order]
        positions = [proj[i] for i in order]
    else:
        files.sort(key=lambda f: (f.instance or 0, str(f.path)))
    spacing = _floats(ds, "PixelSpacing", 2)
    agent = _text(ds, "ContrastBolusAgent").strip()
    return SeriesIndex(
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        modality=_text(ds, "Modality").strip().upper(),
        description=_text(ds, "SeriesDescription"),
        number=_int(ds, "SeriesNumber"),
        image_type=tuple(v.strip().upper() for v in _text(ds, "ImageType").split("\\") if v.strip()),
        slice_thickness_mm=_float(ds, "SliceThickness"),
        orientation=first.orientation,
        pixel_spacing_mm=(spacing[0], spacing[1]) if spacing is not None else None,
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        frames=max(_int(ds, "NumberOfFrames") or 1, 1),
        phase_percent=first.phase,
        trigger_time_ms=_float(ds, "TriggerTime"),
        heart_rate_bpm=_float(ds, "HeartRate"),
        contrast_agent=agent or None,
        kernel=_text(ds, "ConvolutionKernel").strip(),
        files=tuple(f.path for f in files),
        positions_mm=tuple(positions) if positions is not None else None,
        inconsistencies=tuple(notes),
    )


def _series_order(s: SeriesIndex) -> tuple[bool, int, str]:
    return (s.number is None, s.number or 0, s.series_uid)


def index_folder(root: Path) -> FolderIndex:
    """Scan ``root`` recursively and group every readable DICOM file into studies and series.

    Raises
    ------
    InputDataError
        If ``root`` is not a readable folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputDataError(f"DICOM folder {root} does not exist or is not a folder; check the site's pacs path")
    paths = sorted(Path(d) / name for d, _dirs, names in os.walk(root) for name in names)
    ignored: list[Path] = []
    problems: list[IndexProblem] = []
    by_series: dict[tuple[str, str], list[_FileFacts]] = defaultdict(list)
    headers: dict[tuple[str, str], Any] = {}  # the first file's header per series; the others are not kept
    seen: dict[str, Path] = {}
    for path in paths:
        read = _read(root, path, ignored, problems)
        if read is None:
            continue
        facts, ds = read
        if facts.sop_uid and facts.sop_uid in seen:
            problems.append(IndexProblem(path, "duplicate SOP instance: the same image is stored twice"))
            continue
        if facts.sop_uid:
            seen[facts.sop_uid] = path
        key = (facts.study_uid, facts.series_uid)
        by_series[key].append(facts)
        headers.setdefault(key, ds)
    by_study: dict[str, list[SeriesIndex]] = defaultdict(list)
    for key, files in by_series.items():
        by_study[key[0]].append(_build_series(files, headers[key]))
    studies = tuple(
        StudyIndex(uid, tuple(sorted(series, key=_series_order))) for uid, series in sorted(by_study.items())
    )
    for p in problems:
        logger.warning("file %s: %s", file_key(root, p.path), p.problem)
    logger.info(
        "indexed %d files: %d studies, %d series, %d problems, %d non-DICOM files ignored",
        len(paths),
        len(studies),
        sum(len(s.series) for s in studies),
        len(problems),
        len(ignored),
    )
    return FolderIndex(root=root, studies=studies, problems=tuple(problems), ignored_files=len(ignored))
