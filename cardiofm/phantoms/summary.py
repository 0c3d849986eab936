"""Summary table of a synthetic federation, as printed by the CLI and the demo."""

from __future__ import annotations

from rich.table import Table

from cardiofm.constants import DOWNSTREAM_TASKS, TASKS
from cardiofm.contracts.federation import FederationRecord

#: Labelled-case columns: the foundation tasks, then the downstream ones.
_LABEL_COLUMNS = (*TASKS, *DOWNSTREAM_TASKS)


def _vendor(manufacturer: str) -> str:
    """Short vendor name: first word, title-cased unless it is an acronym (GE)."""
    word = manufacturer.split()[0] if manufacturer.split() else "?"
    return word.title() if word.isupper() and len(word) > 3 else word


def summary_rows(record: FederationRecord) -> list[dict[str, object]]:
    """One dict per site: profile, role, studies, series and labelled cases per task."""
    rows: list[dict[str, object]] = []
    for site in record.sites:
        prof = site.scanner_profile
        row: dict[str, object] = {
            "site": site.site_id,
            "role": "held-out" if site.held_out else "train",
            "scanner": f"{_vendor(str(prof['manufacturer']))} {prof['model']}",
            "spacing_mm": f"{float(str(prof['fov_mm'])) / int(record.size['matrix']):.2f}",
            "orientation": prof["orientation"],
            "studies": len(site.studies),
            "series": sum(len(s.series) for s in site.studies),
            "annotations": site.annotation_format or "-",
        }
        for task in _LABEL_COLUMNS:
            row[task] = sum(task in s.tasks_labelled for s in site.studies)
        rows.append(row)
    return rows


def summary_table(record: FederationRecord) -> Table:
    """A rich table of :func:`summary_rows`, with totals."""
    rows = summary_rows(record)
    table = Table(title=f"Synthetic federation (seed {record.seed}, {record.size['name']} studies)")
    columns = [
        "site",
        "role",
        "scanner",
        "spacing_mm",
        "orientation",
        "studies",
        "series",
        "annotations",
        *_LABEL_COLUMNS,
    ]
    for col in columns:
        table.add_column(
            col.replace("_", " "), justify="right" if col in ("studies", "series", *_LABEL_COLUMNS) else "left"
        )
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    totals = {c: sum(int(str(r[c])) for r in rows) for c in ("studies", "series", *_LABEL_COLUMNS)}
    table.add_section()
    table.add_row(
        "total",
        "",
        "",
        "",
        "",
        *(str(totals[c]) for c in ("studies", "series")),
        "",
        *(str(totals[t]) for t in _LABEL_COLUMNS),
    )
    return table
