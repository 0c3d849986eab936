"""Run one step over a Kaapana batch: every case folder in, one output folder per case out.

One bad case never stops the batch: it is quarantined with its reason, and the step's summary
(``$WORKFLOW_DIR/$OPERATOR_OUT_DIR/summary.json``) says how many passed, so that
``cases in = done + quarantined`` always holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cardiofm import __version__
from cardiofm.contracts.dataset import CaseRecord, StepRecord
from cardiofm.contracts.kaapana import KaapanaContext
from cardiofm.contracts.steps import StepParams
from cardiofm.errors import EXIT_OK, EXIT_SKIP, CardioFMError, InputDataError

logger = logging.getLogger(__name__)

P = TypeVar("P", bound=StepParams)
#: A step's work on one case: reads ``in_dir``, writes ``out_dir``, returns notes for the provenance.
CaseFunction = Callable[[Path, Path, P], list[str]]

CASE_RECORD = "case.json"
#: Written into a case's step output when the case is quarantined; later steps skip such cases.
QUARANTINE_MARKER = "quarantine.json"
#: A step's batch-level summary, in ``$WORKFLOW_DIR/$OPERATOR_OUT_DIR``.
SUMMARY_FILE = "summary.json"


@dataclass
class StepSummary:
    """Outcome of a step over a batch."""

    step: str
    done: list[str] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Cases that came in."""
        return len(self.done) + len(self.quarantined)

    def exit_code(self) -> int:
        """0 when at least one case passed, 126 (skip) for an empty batch, else the input-error code."""
        if self.done:
            return EXIT_OK
        if not self.quarantined:
            return EXIT_SKIP
        return InputDataError.exit_code

    def to_json(self) -> dict[str, object]:
        """JSON form written to ``summary.json``."""
        return {
            "step": self.step,
            "in": self.total,
            "done": len(self.done),
            "done_cases": sorted(self.done),
            "quarantined": [{"case": c, "reason": r} for c, r in sorted(self.quarantined.items())],
            "seconds": round(self.seconds, 2),
        }

    def write(self, ctx: KaapanaContext) -> None:
        """Write ``$WORKFLOW_DIR/$OPERATOR_OUT_DIR/summary.json``."""
        ctx.step_dir.mkdir(parents=True, exist_ok=True)
        (ctx.step_dir / SUMMARY_FILE).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepSummary:
        """Read back what :meth:`to_json` wrote."""
        return cls(
            step=str(data["step"]),
            done=[str(c) for c in data.get("done_cases", [])],
            quarantined={str(q["case"]): str(q["reason"]) for q in data.get("quarantined", [])},
            seconds=float(data.get("seconds", 0.0)),
        )


def params_sha256(params: StepParams) -> str:
    """Stable hash of a step's parameters, recorded in provenance."""
    return hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:16]


def case_dirs(ctx: KaapanaContext) -> list[Path]:
    """Case folders of the batch with a usable input folder (not quarantined upstream), in name order."""
    if not ctx.batch_dir.is_dir():
        return []
    return sorted(
        d
        for d in ctx.batch_dir.iterdir()
        if d.is_dir()
        and (d / ctx.operator_in_dir).is_dir()
        and not (d / ctx.operator_in_dir / QUARANTINE_MARKER).exists()
    )


def read_case_record(case_dir: Path) -> CaseRecord:
    """The case's provenance record (created on first use)."""
    path = case_dir / CASE_RECORD
    if path.is_file():
        return CaseRecord.model_validate_json(path.read_text())
    return CaseRecord(case_id=case_dir.name)


def _outputs(out_dir: Path, case_dir: Path) -> list[str]:
    """Top-level outputs of a step, folders summarised by their file count."""
    listing = []
    for p in sorted(out_dir.iterdir()):
        rel = str(p.relative_to(case_dir))
        listing.append(f"{rel}/ ({sum(1 for f in p.rglob('*') if not f.is_dir())} files)" if p.is_dir() else rel)
    return listing


def _forget(case_dir: Path, step: str) -> None:
    """Drop a step's earlier record from the case's provenance (its outputs are gone)."""
    if (case_dir / CASE_RECORD).is_file():
        rec = read_case_record(case_dir)
        rec.steps = [s for s in rec.steps if s.step != step]
        (case_dir / CASE_RECORD).write_text(rec.model_dump_json(indent=2))


def _record(case_dir: Path, step: StepRecord) -> None:
    rec = read_case_record(case_dir)
    rec.steps = [s for s in rec.steps if s.step != step.step] + [step]
    (case_dir / CASE_RECORD).write_text(rec.model_dump_json(indent=2))


def run_batch(
    ctx: KaapanaContext,
    params: P,
    work: CaseFunction[P],
    on_case: Callable[[str], None] | None = None,
) -> StepSummary:
    """Apply ``work`` to every case of the batch; quarantine failures; write the summary."""
    summary = StepSummary(step=params.step)
    start = time.perf_counter()
    digest = params_sha256(params)
    for case_dir in case_dirs(ctx):
        case = case_dir.name
        in_dir, out_dir = case_dir / ctx.operator_in_dir, case_dir / ctx.operator_out_dir
        if out_dir.exists():
            shutil.rmtree(out_dir)
        t0 = time.perf_counter()
        try:
            out_dir.mkdir(parents=True)
            notes = work(in_dir, out_dir, params)
        except CardioFMError as exc:
            # keep the reports the step wrote before failing; mark the folder so later steps skip it
            out_dir.mkdir(parents=True, exist_ok=True)
            marker = {"step": params.step, "reason": str(exc), "error": type(exc).__name__}
            (out_dir / QUARANTINE_MARKER).write_text(json.dumps(marker, indent=2))
            _forget(case_dir, params.step)
            summary.quarantined[case] = str(exc)
            logger.warning("%s: case %s quarantined: %s", params.step, case, exc)
        else:
            outputs = _outputs(out_dir, case_dir)
            _record(
                case_dir,
                StepRecord(
                    step=params.step,
                    version=__version__,
                    params_sha256=digest,
                    seconds=round(time.perf_counter() - t0, 3),
                    outputs=outputs,
                    notes=notes,
                ),
            )
            summary.done.append(case)
        if on_case is not None:
            on_case(case)
    summary.seconds = time.perf_counter() - start
    summary.write(ctx)
    logger.info(
        "%s: %d in, %d done, %d quarantined (%.1f s)",
        params.step,
        summary.total,
        len(summary.done),
        len(summary.quarantined),
        summary.seconds,
    )
    return summary
