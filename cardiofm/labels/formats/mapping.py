"""Turn raw file labels into canonical landmarks, reporting every point that cannot be used."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from cardiofm.constants import LANDMARK_NAMES
from cardiofm.contracts.landmarks import Point3
from cardiofm.errors import LabelError
from cardiofm.labels.formats._common import RawPoint, is_finite
from cardiofm.labels.labelmap import LabelMap

logger = logging.getLogger(__name__)

ProblemKind = Literal["unknown-id", "duplicate", "non-finite", "missing-position"]


@dataclass(frozen=True)
class LabelProblem:
    """One annotation entry that was not imported.

    Attributes
    ----------
    kind:
        ``"unknown-id"`` (label not in the site's label map), ``"duplicate"`` (several entries for one landmark;
        none of them is used), ``"non-finite"`` (NaN/infinite coordinate) or ``"missing-position"`` (label
        without a position, e.g. an unplaced Slicer point or empty CSV cells).
    label:
        The label exactly as written in the file.
    message:
        What is wrong and what to do about it (no patient data).
    canonical:
        The canonical name the label maps to, ``None`` for unknown labels.
    """

    kind: ProblemKind
    label: str
    message: str
    canonical: str | None = None


@dataclass(frozen=True)
class ImportResult:
    """Outcome of :func:`apply_label_map`.

    Attributes
    ----------
    points:
        ``{canonical name: (x, y, z)}`` in canonical order, LPS mm; only unambiguous, finite points.
    problems:
        One entry per file entry that was not used, in file order (duplicates: one per entry involved).
    """

    points: dict[str, Point3]
    problems: list[LabelProblem] = field(default_factory=list)

    @property
    def missing(self) -> tuple[str, ...]:
        """Canonical names without an imported point, in canonical order."""
        return tuple(name for name in LANDMARK_NAMES if name not in self.points)

    def raise_for_problems(self, source: str = "annotation") -> None:
        """Raise a :class:`LabelError` listing every problem, if there is any.

        Parameters
        ----------
        source:
            What to call the input in the message, e.g. the file name (never a path).
        """
        if self.problems:
            listing = "; ".join(p.message for p in self.problems)
            raise LabelError(
                f"{source}: {len(self.problems)} entr{'y' if len(self.problems) == 1 else 'ies'} "
                f"could not be imported: {listing}"
            )


def apply_label_map(raw_points: Iterable[RawPoint] | Mapping[str, Point3 | None], label_map: LabelMap) -> ImportResult:
    """Translate a file's labels to canonical names.

    Nothing is dropped silently: every entry either becomes a point or produces a :class:`LabelProblem`.
    When several usable entries map to the same canonical name (two aliases, or one label written twice) the
    landmark is ambiguous and none of them is used. Entries without a usable position (missing, non-finite)
    are reported but do not make a landmark ambiguous.

    Parameters
    ----------
    raw_points:
        ``(label, (x, y, z) | None)`` pairs as returned by the readers (LPS mm), or a mapping.
    label_map:
        The site's label map.

    Returns
    -------
    ImportResult
        Canonical points (LPS mm) and problems.
    """
    pairs = list(raw_points.items()) if isinstance(raw_points, Mapping) else list(raw_points)
    problems: list[tuple[int, LabelProblem]] = []

    def report(index: int, kind: ProblemKind, label: str, message: str, canonical: str | None = None) -> None:
        problems.append((index, LabelProblem(kind, label, message, canonical)))

    usable: dict[str, list[tuple[int, str, Point3]]] = {}
    for index, (label, xyz) in enumerate(pairs):
        canonical = label_map.canonical(label)
        if canonical is None:
            shown = f"label {label!r}" if label.strip() else "an entry without a label"
            report(
                index,
                "unknown-id",
                label,
                f"{shown} is not in the site label map; add it to the site's label map (aliases) or fix the annotation",
            )
        elif xyz is None:
            report(
                index,
                "missing-position",
                label,
                f"label {label!r} ({canonical}) has no position; place the point in the annotation tool "
                "or remove the entry",
                canonical,
            )
        elif not is_finite(xyz):
            report(
                index,
                "non-finite",
                label,
                f"label {label!r} ({canonical}) has a non-finite coordinate; re-place the point or remove the entry",
                canonical,
            )
        else:
            usable.setdefault(canonical, []).append((index, label, xyz))

    points: dict[str, Point3] = {}
    for canonical, entries in usable.items():
        if len(entries) == 1:
            points[canonical] = entries[0][2]
            continue
        labels = ", ".join(repr(label) for _, label, _ in entries)
        for index, label, _ in entries:
            report(
                index,
                "duplicate",
                label,
                f"{canonical} is annotated {len(entries)} times (labels {labels}); none is used because it is "
                "ambiguous; keep exactly one point for it in the annotation or fix the site's label map",
                canonical,
            )
    problems.sort(key=lambda item: item[0])
    result = ImportResult(
        points={name: points[name] for name in LANDMARK_NAMES if name in points},
        problems=[p for _, p in problems],
    )
    if result.problems:
        logger.info("label map: %d points imported, %d problems", len(result.points), len(result.problems))
    return result
