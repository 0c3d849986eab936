"""Read and write site landmark annotations; all coordinates on the Python side are LPS mm.

Site-format readers (:func:`read_mps`, :func:`read_mrk_json`, :func:`read_csv`) return lists of
``(label as written in the file, (x, y, z) | None)`` pairs so that repeated labels survive; pass them to
:func:`apply_label_map` with the site's :class:`~cardiofm.labels.labelmap.LabelMap` to get canonical points and
a list of problems. The canonical :func:`read_landmarks_json` returns ``{canonical name: xyz}`` directly.
"""

from __future__ import annotations

from pathlib import Path

from cardiofm.contracts.site import CsvLayout
from cardiofm.labels.formats._common import PointsLike, RawPoint, file_error
from cardiofm.labels.formats.landmarks_json import read_landmarks_json, write_landmarks_json
from cardiofm.labels.formats.mapping import ImportResult, LabelProblem, ProblemKind, apply_label_map
from cardiofm.labels.formats.mps import read_mps, write_mps
from cardiofm.labels.formats.slicer import MARKUPS_SCHEMA, read_mrk_json, write_mrk_json
from cardiofm.labels.formats.table import CSV_LAYOUTS, read_csv, write_csv
from cardiofm.labels.labelmap import LabelMap

__all__ = [
    "CSV_LAYOUTS",
    "MARKUPS_SCHEMA",
    "CsvLayout",
    "ImportResult",
    "LabelProblem",
    "PointsLike",
    "ProblemKind",
    "RawPoint",
    "apply_label_map",
    "import_annotation",
    "read_csv",
    "read_landmarks_json",
    "read_mps",
    "read_mrk_json",
    "write_csv",
    "write_landmarks_json",
    "write_mps",
    "write_mrk_json",
]


def import_annotation(path: Path | str, label_map: LabelMap, csv_layout: CsvLayout | None = None) -> ImportResult:
    """Read one case's annotation file of any supported format and map it to canonical names.

    The format is chosen by file name: ``*.mps`` (MITK), ``*.mrk.json`` (Slicer), ``*.csv``/``*.tsv``/``*.txt``
    (needs ``csv_layout`` without a case column, or with exactly one case in the file), other ``*.json``
    (canonical ``landmarks.json``; ``label_map`` is still applied, use :meth:`LabelMap.identity`).

    Parameters
    ----------
    path:
        The annotation file.
    label_map:
        The site's label map.
    csv_layout:
        Layout of table files.

    Returns
    -------
    ImportResult
        Canonical points (LPS mm) and problems.

    Raises
    ------
    LabelError
        If the file is unreadable, its format unknown, or a table lacks a layout or holds several cases.
    """
    name = Path(path).name.lower()
    raw: list[RawPoint]
    if name.endswith(".mps"):
        raw = read_mps(path)
    elif name.endswith(".mrk.json"):
        raw = read_mrk_json(path)
    elif name.endswith((".csv", ".tsv", ".txt")):
        if csv_layout is None:
            raise file_error(path, "is a table", "configure the site's CSV layout (delimiter, columns)")
        by_case = read_csv(path, csv_layout)
        if len(by_case) > 1:
            raise file_error(path, f"holds {len(by_case)} cases", "import site-wide tables with read_csv")
        raw = next(iter(by_case.values()), [])
    elif name.endswith(".json"):
        raw = list(read_landmarks_json(path).items())
    else:
        raise file_error(path, "has an unknown annotation format", "use .mps, .mrk.json, .csv/.tsv or landmarks.json")
    return apply_label_map(raw, label_map)
