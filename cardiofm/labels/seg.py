"""DICOM SEG masks (highdicom) → a binary array indexed ``[i, j, k]`` on a :class:`~cardiofm.imaging.geometry.Grid`.

Hospitals keep calcification masks as DICOM Segmentation objects next to the CT they were drawn on.
The SEG's frames are sorted along the slice normal by highdicom's volume API, which also checks that
the frames share one orientation and lie on a regular stack; frames a SEG omits because they are
empty read as zeros. Every problem is a :class:`~cardiofm.errors.LabelError` that names the file
only (never its patient attributes).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.errors import InvalidDicomError

from cardiofm.errors import LabelError
from cardiofm.imaging.geometry import LPS_TO_RAS_4X4, Grid

logger = logging.getLogger(__name__)

#: Default segment when a SEG holds several: the one whose label mentions calcification.
_CALC_LABEL = re.compile(r"calc", re.IGNORECASE)
#: Errors highdicom/pydicom raise on a file that is not a (usable) SEG.
_READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError)
#: Errors highdicom raises when the frames do not form a regular 3-D volume.
_VOLUME_ERRORS = (RuntimeError, ValueError, TypeError, AttributeError, KeyError, IndexError, ZeroDivisionError)


def _segment_labels(seg: hd.seg.Segmentation) -> dict[int, str]:
    """Segment number → label (empty string when the SEG gives none)."""
    labels: dict[int, str] = {}
    for number in seg.segment_numbers:
        description = seg.get_segment_description(int(number))
        labels[int(number)] = str(getattr(description, "SegmentLabel", "") or "")
    return labels


def _listing(labels: dict[int, str]) -> str:
    return ", ".join(f"{n}: {label!r}" for n, label in sorted(labels.items())) or "none"


def _select_segment(labels: dict[int, str], segment: int | str | None, name: str) -> int:
    """The segment number chosen by number, by label (case-insensitive) or by default."""
    if isinstance(segment, int) and not isinstance(segment, bool):
        if segment not in labels:
            raise LabelError(f"{name} has no segment number {segment}; its segments are {_listing(labels)}")
        return segment
    if isinstance(segment, str):
        wanted = segment.strip().casefold()
        hits = [n for n, label in labels.items() if label.strip().casefold() == wanted]
        if len(hits) != 1:
            what = "no segment" if not hits else "several segments"
            raise LabelError(f"{name} has {what} labelled {segment!r}; its segments are {_listing(labels)}")
        return hits[0]
    if segment is not None:
        raise LabelError(f"segment must be a number, a label or None, got {type(segment).__name__}")
    if len(labels) == 1:
        return next(iter(labels))
    hits = [n for n, label in labels.items() if _CALC_LABEL.search(label)]
    if len(hits) == 1:
        return hits[0]
    raise LabelError(
        f"{name} holds {len(labels)} segments and none or several match 'calc'; "
        f"name the segment to import (segments: {_listing(labels)})"
    )


def read_seg_mask(path: Path, segment: int | str | None = None) -> tuple[npt.NDArray[np.uint8], Grid]:
    """Read one segment of a DICOM SEG as a binary mask on its own grid.

    Parameters
    ----------
    path:
        A DICOM Segmentation Storage file (BINARY or FRACTIONAL; FRACTIONAL is thresholded at 0.5).
    segment:
        Segment number (``int``) or label (``str``, case-insensitive). ``None`` picks the only segment,
        or else the single segment whose label contains "calc" (any case).

    Returns
    -------
    tuple[numpy.ndarray, Grid]
        The mask (uint8, 0/1) indexed ``[i, j, k]`` (i along a frame row, j down its columns, k over the
        frames sorted along the slice normal), and its grid in LPS mm. The grid is widened by one empty
        slice at either end of k, so that the outermost frames of a SEG that omits empty frames are not
        clipped by nearest-neighbour resampling at the grid edge.

    Raises
    ------
    LabelError
        If the file is not a readable DICOM SEG, the segment is unknown or ambiguous, or the frames lack
        geometry or do not form a regularly spaced, unsheared stack.
    """
    name = Path(path).name
    try:
        seg = hd.seg.segread(str(path))
    except _READ_ERRORS as exc:
        raise LabelError(f"{name} is not a readable DICOM SEG ({type(exc).__name__})") from exc
    try:
        labels = _segment_labels(seg)
    except _READ_ERRORS as exc:
        raise LabelError(f"{name} has an unreadable segment sequence ({type(exc).__name__})") from exc
    if not labels:
        raise LabelError(f"{name} holds no segment")
    number = _select_segment(labels, segment, name)
    try:
        volume = seg.get_volume(segment_numbers=[number], combine_segments=False, allow_missing_positions=True)
        values = np.asarray(volume.array)
        affine_lps = np.asarray(volume.affine, dtype=np.float64)
    except _VOLUME_ERRORS as exc:
        raise LabelError(
            f"{name} does not form a regular 3-D volume: missing plane geometry or non-uniform frame spacing "
            f"({type(exc).__name__})"
        ) from exc
    if values.ndim == 4 and values.shape[3] == 1:
        values = values[..., 0]
    if values.ndim != 3:
        raise LabelError(f"{name} gives a {values.ndim}-D segment volume; expected 3-D")
    binary = values >= 0.5 if values.dtype.kind == "f" else values > 0
    # highdicom: array [slice, row, column]; cardiofm: [i = column, j = row, k = slice]
    mask_ijk = np.ascontiguousarray(binary.transpose(2, 1, 0), dtype=np.uint8)
    affine_ijk = affine_lps.copy()
    affine_ijk[:3, :3] = affine_lps[:3, [2, 1, 0]]
    padded = np.pad(mask_ijk, ((0, 0), (0, 0), (1, 1)))
    affine_ijk[:3, 3] = affine_ijk[:3, 3] - affine_ijk[:3, 2]
    try:
        grid = Grid.from_affine_ras(LPS_TO_RAS_4X4 @ affine_ijk, padded.shape)
    except ValueError as exc:
        raise LabelError(f"{name} has unusable plane geometry ({exc})") from exc
    logger.debug("read segment %d of %s: %d voxels on a %s grid", number, name, int(padded.sum()), grid.shape)
    return padded, grid
