"""Choose, in every study of a DICOM folder, the series fit for TAVI planning (step ``select-series``).

Each series is checked against :class:`~cardiofm.contracts.selection.SeriesRules`; every failed rule
adds a human-readable reason. Header rules come first and cost nothing beyond the index; only series
that pass all of them have pixels read (five slices over the central 60 %) to measure contrast, as in
:mod:`cardiofm.contracts.selection`. Among the accepted series the nearest cardiac phase wins, then
the preferred kernels, then the ``prefer`` tie-breakers, then the lowest series number and UID.

Logs carry hashed study and series UIDs only; descriptions and paths are never logged.
"""

from __future__ import annotations

import logging
import math
import re
import statistics
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.pixels.decoders.base import get_decoder
from scipy.ndimage import distance_transform_edt, median_filter

from cardiofm.contracts.selection import (
    FALLBACK_PHASE_PERCENT,
    SelectionProblem,
    SelectionReport,
    SeriesCandidate,
    SeriesRules,
    StudySelection,
)
from cardiofm.dicom.index import FolderIndex, SeriesIndex, StudyIndex, file_key, hashed, index_folder
from cardiofm.errors import InputDataError

logger = logging.getLogger(__name__)

#: A phase written into a description, e.g. "TAVI 40%" or "75 %".
_PHASE_RE = re.compile(r"(?<![\d.,])(\d{1,3}(?:[.,]\d+)?)\s*%")
#: ContrastBolusAgent values that mean "no contrast" (upper-cased, stripped).
_NO_AGENT = frozenset({"NONE", "NO", "N/A", "NA", "0", "-", "NATIVE", "WITHOUT", "NO CONTRAST"})
#: Blood-pool estimate (see :func:`blood_pool_hu`): where the slices are sampled (fractions of the
#: series), the disk around the image centre, how deep inside a bright region a voxel must lie, the
#: smallest pooled core area that counts as a blood pool, and the bright-region threshold as a
#: fraction of ``contrast_min_hu``.
_SAMPLE_FRACTIONS = (0.2, 0.35, 0.5, 0.65, 0.8)
_DISK_RADIUS_MM = 35.0
_CORE_DEPTH_MM = 8.0
_MIN_CORE_AREA_MM2 = 200.0
_BRIGHT_FRACTION = 0.8
#: Positions closer than this (mm) along the normal count as the same slice.
_SAME_POSITION_MM = 0.01
#: A step this many times the median spacing counts as a gap (missing slices).
_GAP_FACTOR = 1.5
_RR_MS_PER_BPM = 60_000.0
_PERCENT = 100.0


def phase_of(series: SeriesIndex) -> float | None:
    """Cardiac phase in percent R-R: the nominal tag, else TriggerTime with HeartRate, else the description."""
    if series.phase_percent is not None:
        return series.phase_percent
    if series.trigger_time_ms is not None and series.heart_rate_bpm:
        pct = series.trigger_time_ms / (_RR_MS_PER_BPM / series.heart_rate_bpm) * _PERCENT
        if 0.0 <= pct <= _PERCENT:
            return round(pct, 1)
    match = _PHASE_RE.search(series.description)
    if match is not None:
        value = float(match.group(1).replace(",", "."))
        if 0.0 <= value <= _PERCENT:
            return value
    return None


def phase_distance(a: float, b: float) -> float:
    """Circular distance between two phases in percent R-R (0 % and 100 % coincide)."""
    d = abs(a - b) % _PERCENT
    return min(d, _PERCENT - d)


def contrast_tag(agent: str | None) -> bool | None:
    """ContrastBolusAgent read as True (names an agent), False (says none) or None (absent)."""
    if agent is None or not agent.strip():
        return None
    return agent.strip().upper() not in _NO_AGENT


def undecodable_reason(ds: Any) -> str | None:
    """Why the pixel data of ``ds`` cannot be decoded in this environment (what to install); None when it can.

    Uncompressed data and compressed data with an installed pydicom decoder plugin give None.
    """
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not ts.is_compressed:
        return None
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return (
            f"pixel data in {ts.name} ({ts}) cannot be decoded: pydicom has no decoder for this transfer syntax; "
            "export the series uncompressed or as JPEG 2000, JPEG-LS, JPEG lossless or RLE"
        )
    if decoder.is_available:
        return None
    options = [d.split(" - requires ", 1)[-1] for d in decoder.missing_dependencies]
    options = [o.replace("gdcm>=", "python-gdcm>=") if o.startswith("gdcm") else o for o in options]
    return f"pixel data in {ts.name} cannot be decoded here: install {' or '.join(options) or 'a pydicom decoder'}"


def _slice_hu(path: Path) -> tuple[np.ndarray, tuple[float, float]] | str:
    """A slice in HU, 3x3-median filtered, and its pixel spacing (mm); why not when unusable."""
    try:
        ds = pydicom.dcmread(path)
        missing = undecodable_reason(ds)
        if missing is not None:
            return missing
        raw = np.asarray(ds.pixel_array, dtype=np.float32)
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
    except Exception as exc:  # corrupt, undecodable or incomplete images must not stop the selection
        logger.debug("pixels of %s unreadable (%s)", hashed(str(path)), type(exc).__name__)
        return f"pixel data unreadable ({type(exc).__name__})"
    if raw.ndim != 2:
        return f"pixel data is not a single-channel 2-D image (array shape {raw.shape})"
    if min(raw.shape) < 3 or min(spacing) <= 0:
        return "pixel data too small or pixel spacing not positive"
    return median_filter(raw * slope + intercept, size=3, mode="nearest"), spacing


def _blood_pool(files: Sequence[Path], contrast_min_hu: float) -> tuple[float | None, str | None]:
    """:func:`blood_pool_hu` and, when it is None, why: the first sampled slice's problem."""
    n = len(files)
    picks = sorted({round(f * (n - 1)) for f in _SAMPLE_FRACTIONS}) if n else []
    core: list[np.ndarray] = []
    central: list[np.ndarray] = []
    core_area = 0.0
    problem: str | None = None if picks else "no slices"
    for i in picks:
        read = _slice_hu(files[i])
        if isinstance(read, str):
            problem = problem or read
            continue
        hu, (sr, sc) = read
        yy, xx = np.ogrid[: hu.shape[0], : hu.shape[1]]
        disk = ((yy - (hu.shape[0] - 1) / 2) * sr) ** 2 + ((xx - (hu.shape[1] - 1) / 2) * sc) ** 2 <= _DISK_RADIUS_MM**2
        bright = hu >= _BRIGHT_FRACTION * contrast_min_hu
        deep = bright & disk & (distance_transform_edt(bright, sampling=(sr, sc)) >= _CORE_DEPTH_MM)
        core.append(hu[deep])
        central.append(hu[disk] if disk.any() else hu.ravel())
        core_area += float(deep.sum()) * sr * sc
    if not central:
        return None, problem
    if core_area >= _MIN_CORE_AREA_MM2:
        return float(np.median(np.concatenate(core))), None
    return float(np.median(np.concatenate(central))), None


def blood_pool_hu(files: Sequence[Path], contrast_min_hu: float) -> float | None:
    """Blood-pool estimate (HU) of a series from five sampled slices; None when none is readable.

    Slices at 20, 35, 50, 65 and 80 % of the series (the middle slice alone can miss the heart when
    the scan includes the aortic arch) are converted to HU and 3x3-median filtered. *Blood-pool-like*
    voxels lie within 35 mm of the image centre (cardiac reconstructions are centred on the heart),
    at or above 0.8 x ``contrast_min_hu``, and at least 8 mm deep inside such a bright region, which
    excludes ribs, sternum, coronary calcium and noise, but keeps the aortic root and the chambers.
    With at least 200 mm² of them pooled, the estimate is their median HU; otherwise there is no
    blood pool to see and the estimate is the median HU of the central disks (soft tissue).
    """
    return _blood_pool(files, contrast_min_hu)[0]


def _thickness(series: SeriesIndex) -> float | None:
    """SliceThickness, else the median spacing of the slice positions."""
    if series.slice_thickness_mm is not None and series.slice_thickness_mm > 0:
        return series.slice_thickness_mm
    pos = series.positions_mm
    if pos is None or len(pos) < 2:
        return None
    steps = [b - a for a, b in pairwise(pos) if b - a > _SAME_POSITION_MM]
    return statistics.median(steps) if steps else None


def _geometry_reasons(series: SeriesIndex) -> list[str]:
    pos = series.positions_mm
    if pos is None:
        return ["slice positions unknown (ImagePositionPatient or ImageOrientationPatient missing)"]
    steps = [b - a for a, b in pairwise(pos)]
    reasons: list[str] = []
    duplicates = sum(1 for s in steps if s <= _SAME_POSITION_MM)
    if duplicates:
        reasons.append(f"{duplicates} duplicate slice positions (several phases or acquisitions in one series?)")
    real = [s for s in steps if s > _SAME_POSITION_MM]
    if len(real) >= 2:
        usual, largest = statistics.median(real), max(real)
        if largest > _GAP_FACTOR * usual:
            reasons.append(f"irregular slice spacing: a {largest:.1f} mm gap where {usual:.1f} mm is usual")
    return reasons


def _first_match(patterns: Sequence[str], text: str) -> str | None:
    return next((p for p in patterns if re.search(p, text, re.IGNORECASE)), None)


def header_reasons(series: SeriesIndex, rules: SeriesRules) -> list[str]:
    """Every header rule ``series`` fails, as human-readable reasons (empty: all passed)."""
    reasons: list[str] = []
    if series.modality != rules.modality.upper():
        reasons.append(f"modality {series.modality or 'missing'} is not {rules.modality}")
    shown = "\\".join(series.image_type) or "missing"
    missing = [t for t in rules.require_image_type if t.upper() not in series.image_type]
    if missing:
        reasons.append(f"image type {shown} lacks {', '.join(missing)}")
    present = [t for t in rules.reject_image_type if t.upper() in series.image_type]
    if present:
        reasons.append(f"image type {shown} contains {', '.join(present)}")
    if series.frames > 1:
        reasons.append(f"multi-frame image ({series.frames} frames) is not supported")
    if rules.require_axial:
        normal = series.normal
        if normal is None:
            reasons.append("orientation unknown (no valid ImageOrientationPatient)")
        else:
            angle = math.degrees(math.acos(min(1.0, abs(normal[2]))))
            if angle > rules.axial_tolerance_deg:
                reasons.append(
                    f"not axial: slice normal {angle:.0f}° from the patient z axis > {rules.axial_tolerance_deg:g}°"
                )
    thickness = _thickness(series)
    if rules.max_slice_thickness_mm is not None:
        if thickness is None:
            reasons.append("slice thickness unknown")
        elif thickness > rules.max_slice_thickness_mm:
            reasons.append(f"slice thickness {thickness:g} mm > {rules.max_slice_thickness_mm:g} mm allowed")
    if len(series.files) < rules.min_slices:
        n = len(series.files)
        reasons.append(f"{n} slice{'' if n == 1 else 's'} < {rules.min_slices} required")
    reasons += _geometry_reasons(series)
    reasons += list(series.inconsistencies)
    excluded = _first_match(rules.description_exclude, series.description)
    if excluded is not None:
        reasons.append(f"description matches excluded pattern {excluded!r}")
    if rules.description_include and _first_match(rules.description_include, series.description) is None:
        reasons.append(f"description matches none of the required patterns {rules.description_include}")
    phase = phase_of(series)
    target = rules.preferred_phase_percent
    if target is not None and phase is not None and phase_distance(phase, target) > rules.phase_tolerance_percent:
        reasons.append(f"cardiac phase {phase:g}% is not the preferred {target}% (±{rules.phase_tolerance_percent}%)")
    return reasons


def _contrast(series: SeriesIndex, rules: SeriesRules, header_ok: bool) -> tuple[float | None, list[str]]:
    """Blood-pool estimate (None: not measured) and the contrast reasons."""
    if rules.contrast == "any":
        return None, []
    tag = contrast_tag(series.contrast_agent)
    if not header_ok:
        if tag is False:
            return None, ["no contrast: ContrastBolusAgent says none"]
        if tag is None:
            return None, ["no contrast tag (ContrastBolusAgent absent); blood pool not measured as header rules failed"]
        return None, []
    hu, problem = _blood_pool(series.files, rules.contrast_min_hu)
    if hu is None:
        if tag:
            logger.warning("series %s: %s; trusting ContrastBolusAgent", hashed(series.series_uid), problem)
            return None, []
        return None, [f"contrast not confirmed (no ContrastBolusAgent): {problem}"]
    if hu < rules.contrast_min_hu:
        note = " (the pixels overrule ContrastBolusAgent)" if tag else ""
        return hu, [f"no contrast: blood-pool estimate {hu:.0f} HU < {rules.contrast_min_hu:g} HU{note}"]
    return hu, []


def _rank(candidate: SeriesCandidate, rules: SeriesRules) -> tuple[tuple[float, ...], str]:
    """Sort key among accepted candidates: smaller is better."""
    target = rules.preferred_phase_percent
    target = FALLBACK_PHASE_PERCENT if target is None else target
    phase = candidate.phase
    keys: list[float] = [1.0, 0.0] if phase is None else [0.0, round(phase_distance(phase, target))]
    kernel = next(
        (i for i, p in enumerate(rules.kernels_preferred) if re.search(p, candidate.kernel, re.IGNORECASE)),
        len(rules.kernels_preferred),
    )
    keys.append(float(kernel))
    for tie in rules.prefer:
        if tie == "thinnest":
            keys.append(candidate.slice_thickness_mm if candidate.slice_thickness_mm is not None else math.inf)
        else:
            keys.append(-float(candidate.slices))
    keys += [float(candidate.number is None), float(candidate.number or 0)]
    return tuple(keys), candidate.uid


def _candidate(series: SeriesIndex, rules: SeriesRules) -> SeriesCandidate:
    reasons = header_reasons(series, rules)
    hu, more = _contrast(series, rules, header_ok=not reasons)
    reasons += more
    thickness = _thickness(series)
    return SeriesCandidate(
        uid=series.series_uid,
        description=series.description.strip(),
        number=series.number,
        modality=series.modality,
        kernel=series.kernel,
        slices=len(series.files),
        slice_thickness_mm=round(thickness, 3) if thickness is not None else None,
        image_type=list(series.image_type),
        phase=phase_of(series),
        contrast_tag=contrast_tag(series.contrast_agent),
        contrast_hu=round(hu, 1) if hu is not None else None,
        accepted=not reasons,
        reasons=reasons,
    )


def _why_none(candidates: Sequence[SeriesCandidate]) -> str:
    """Why nothing was chosen: every series that came closest (fewest failed rules), with its reasons."""
    if not candidates:
        return "the study holds no series"
    fewest = min(len(c.reasons) for c in candidates)
    closest = sorted(
        (c for c in candidates if len(c.reasons) == fewest),
        key=lambda c: c.number if c.number is not None else 1 << 30,
    )[:3]
    parts = [
        f"series {'#' + str(c.number) if c.number is not None else 'without number'}: {'; '.join(c.reasons)}"
        for c in closest
    ]
    return f"none of the {len(candidates)} series passed the rules; closest: " + " | ".join(parts)


def select_series(study: StudyIndex, rules: SeriesRules) -> StudySelection:
    """Evaluate every series of ``study`` against ``rules`` and choose the best accepted one."""
    candidates = [_candidate(s, rules) for s in study.series]
    accepted = [c for c in candidates if c.accepted]
    if not accepted:
        reason = _why_none(candidates)
        logger.warning("study %s: no series chosen: %s", study.key, reason)
        return StudySelection(
            study_uid=study.study_uid, chosen_series_uid=None, candidates=candidates, reason_if_none=reason
        )
    best = min(accepted, key=lambda c: _rank(c, rules))
    logger.info(
        "study %s: chose series %s (%d of %d series accepted)",
        study.key,
        hashed(best.uid),
        len(accepted),
        len(candidates),
    )
    return StudySelection(study_uid=study.study_uid, chosen_series_uid=best.uid, candidates=candidates)


def select_index(index: FolderIndex, rules: SeriesRules) -> SelectionReport:
    """Select a series in every study of an index; unusable files become report problems."""
    return SelectionReport(
        studies=[select_series(s, rules) for s in index.studies],
        problems=[SelectionProblem(file_key=file_key(index.root, p.path), problem=p.problem) for p in index.problems],
        ignored_files=index.ignored_files,
        rules=rules,
    )


def select_all(root: Path, rules: SeriesRules) -> SelectionReport:
    """Index the DICOM files under ``root`` (any layout) and select a series in every study found.

    Raises
    ------
    InputDataError
        If ``root`` is not a folder or holds no DICOM study at all.
    """
    index = index_folder(root)
    if not index.studies:
        raise InputDataError(
            f"no DICOM study found under {root} ({index.ignored_files} non-DICOM files, "
            f"{len(index.problems)} unusable DICOM files); check the site's pacs path"
        )
    report = select_index(index, rules)
    chosen = sum(1 for s in report.studies if s.chosen_series_uid is not None)
    logger.info("selected a series in %d of %d studies", chosen, len(report.studies))
    return report
