"""Landmark tables (CSV/TSV) with a configurable layout, including German ``;`` / decimal-comma files.

A table has a header row and one row per point: a label column, three coordinate columns and, for site-wide
tables that hold many cases, a case column. An empty coordinate cell means "no position" (reported as missing).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from cardiofm.contracts.site import CsvLayout
from cardiofm.labels.formats._common import (
    PointsLike,
    RawPoint,
    as_pairs,
    file_error,
    format_float,
    point_from_lps,
    point_to_lps,
    read_bytes,
)

logger = logging.getLogger(__name__)


CSV_LAYOUTS: Final[dict[str, CsvLayout]] = {
    "default": CsvLayout(),
    "site_wide": CsvLayout(case_column="case_id"),
    "german": CsvLayout(
        delimiter=";",
        decimal=",",
        label_column="Landmarke",
        x_column="X",
        y_column="Y",
        z_column="Z",
        case_column="Fall",
        encoding="cp1252",
    ),
    "ras_tsv": CsvLayout(
        delimiter="\t", coordinate_system="RAS", label_column="name", x_column="r", y_column="a", z_column="s"
    ),
}


def write_csv(path: Path | str, rows_by_case: Mapping[str, PointsLike], layout: CsvLayout) -> Path:
    """Write a landmark table.

    Parameters
    ----------
    path:
        Output file; parent folders are created.
    rows_by_case:
        ``{case id: points}`` where points are ``{site label: (x, y, z)}`` or ``(label, xyz)`` pairs, LPS mm;
        ``None`` positions become empty cells. Without ``layout.case_column`` it must hold exactly one case
        (its key is not written; use ``""``).
    layout:
        Delimiter, column names, coordinate system and decimal separator of the file.

    Returns
    -------
    Path
        The file written.
    """
    if layout.case_column is None and len(rows_by_case) != 1:
        raise ValueError(f"layout has no case column, so exactly one case can be written (got {len(rows_by_case)})")
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=layout.delimiter, lineterminator="\n")
    writer.writerow(layout.columns)
    count = 0
    for case, points in rows_by_case.items():
        for label, xyz in as_pairs(points):
            if xyz is None:
                cells = ["", "", ""]
            else:
                cells = [_format(v, layout) for v in point_from_lps(xyz, layout.coordinate_system)]
            head = [case] if layout.case_column is not None else []
            writer.writerow([*head, label, *cells])
            count += 1
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buffer.getvalue().encode(layout.encoding))
    logger.debug("wrote %d rows to %s", count, out.name)
    return out


def read_csv(path: Path | str, layout: CsvLayout) -> dict[str, list[RawPoint]]:
    """Read a landmark table.

    Parameters
    ----------
    path:
        A CSV/TSV file with a header row.
    layout:
        Its delimiter, column names, coordinate system and decimal separator.

    Returns
    -------
    dict[str, list[RawPoint]]
        ``{case id: [(label, (x, y, z) | None), ...]}`` in file order, LPS mm; the case id is ``""`` when the
        layout has no case column. Labels are as written (surrounding spaces stripped); repeated labels are
        kept. A row with any empty coordinate cell has a ``None`` position.

    Raises
    ------
    LabelError
        If the file cannot be decoded, a column is missing, a row is short or long, a case id is empty, or a
        coordinate is not a number in the layout's decimal format.
    """
    encoding = "utf-8-sig" if layout.encoding == "utf-8" else layout.encoding
    try:
        text = read_bytes(path).decode(encoding)
    except UnicodeDecodeError:
        raise file_error(
            path, f"is not {layout.encoding} text", "save it with that encoding or fix the layout"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=layout.delimiter, strict=True)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise file_error(path, f"is not a valid table ({exc})", "fix the quoting in the file") from None
    numbered = [(number, row) for number, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    if not numbered:
        raise file_error(path, "is empty", "export the table with a header row")
    header = [cell.strip() for cell in numbered[0][1]]
    missing = [c.strip() for c in layout.columns if c.strip() not in header]
    if missing:
        raise file_error(
            path,
            f"has no column(s) {missing} (header: {header}, delimiter {layout.delimiter!r})",
            "fix the site's CSV layout (column names, delimiter) or the file's header",
        )
    index = {column: header.index(column.strip()) for column in layout.columns}
    result: dict[str, list[RawPoint]] = {}
    for line_number, row in numbered[1:]:
        if len(row) != len(header):
            raise file_error(
                path,
                f"has {len(row)} fields in row {line_number} but {len(header)} in the header",
                "fix the row (a stray delimiter or a decimal comma in a comma-separated file?)",
            )
        case = ""
        if layout.case_column is not None:
            case = row[index[layout.case_column]].strip()
            if not case:
                raise file_error(path, f"has an empty case id in row {line_number}", "fill in the case id")
        label = row[index[layout.label_column]].strip()
        cells = [row[index[c]].strip() for c in (layout.x_column, layout.y_column, layout.z_column)]
        xyz = None
        if all(cells):
            x, y, z = (_parse(path, cell, layout, line_number) for cell in cells)
            xyz = point_to_lps((x, y, z), layout.coordinate_system)
        result.setdefault(case, []).append((label, xyz))
    logger.debug("read %d rows (%d cases) from a landmark table", len(numbered) - 1, len(result))
    return result


def _format(value: float, layout: CsvLayout) -> str:
    """Coordinate text in the layout's decimal format (exact round trip)."""
    text = format_float(value)
    return text.replace(".", ",") if layout.decimal == "," else text


def _parse(path: Path | str, cell: str, layout: CsvLayout, line_number: int) -> float:
    """Parse a coordinate cell in the layout's decimal format, or raise a :class:`LabelError`."""
    other = "," if layout.decimal == "." else "."
    if other in cell:
        hint = (
            "set the layout's decimal to ',' (and a ';' or tab delimiter)"
            if other == ","
            else "remove thousands separators or set the layout's decimal to '.'"
        )
        raise file_error(path, f"has the coordinate {cell!r} in row {line_number}", hint)
    try:
        return float(cell.replace(",", ".") if layout.decimal == "," else cell)
    except ValueError:
        raise file_error(
            path, f"has a non-numeric coordinate {cell!r} in row {line_number}", "enter the coordinate in mm"
        ) from None
