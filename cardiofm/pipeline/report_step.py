"""``prepare-report``: the last step of preparation; the site's reports, and no DICOM left behind.

Reads the stage step's ``studies.json`` and every step's ``summary.json`` in ``$WORKFLOW_DIR``, writes into
the dataset folder ``selection.json`` (per study: the chosen series or none, every rejected series with its
reasons), ``quarantine.json`` (every study or file that did not make it, with the step and the reason) and
``prepare-summary.json`` (counts per step), then removes the PACS mirror and the links to DICOM files (their
paths may name patients) from the work folder. Always: in = prepared + quarantined.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cardiofm.contracts.dataset import DatasetManifest
from cardiofm.contracts.kaapana import KaapanaContext
from cardiofm.contracts.steps import PrepareReportParams
from cardiofm.errors import EXIT_OK, EXIT_SKIP, InputDataError
from cardiofm.pipeline.runner import SUMMARY_FILE, StepSummary
from cardiofm.pipeline.stage_step import MIRROR_DIR, STUDIES_FILE


@dataclass
class PrepareResult:
    """Counts and where the outputs are."""

    studies_in: int
    prepared: int
    quarantined: list[dict[str, str]] = field(default_factory=list)
    steps: list[StepSummary] = field(default_factory=list)
    manifest: DatasetManifest | None = None

    @property
    def balanced(self) -> bool:
        """In = prepared + quarantined (studies only; unreadable files are listed separately)."""
        studies_q = sum(1 for q in self.quarantined if q["kind"] == "study")
        return self.studies_in == self.prepared + studies_q

    def exit_code(self) -> int:
        """0 when at least one study was prepared (and the counts balance), 126 for a PACS with no study, else 3.

        So a run whose every study was quarantined fails (its reports are written all the same).
        """
        if not self.balanced:
            return InputDataError.exit_code
        if self.prepared:
            return EXIT_OK
        return EXIT_SKIP if self.studies_in == 0 else InputDataError.exit_code


def read_prepare_result(dataset_dir: Path) -> PrepareResult:
    """The result of a preparation from the reports it wrote (a DAG run's, read back by the caller)."""
    summary = _read_json(dataset_dir / "prepare-summary.json", "prepare-summary.json")
    manifest_path = dataset_dir / "manifest.json"
    manifest = DatasetManifest.model_validate_json(manifest_path.read_text()) if manifest_path.is_file() else None
    return PrepareResult(
        studies_in=int(summary["in"]),
        prepared=int(summary["prepared"]),
        quarantined=list(_read_json_list(dataset_dir / "quarantine.json")),
        steps=[StepSummary.from_json(s) for s in summary["steps"]],
        manifest=manifest,
    )


def _read_json_list(path: Path) -> list[dict[str, str]]:
    data: list[dict[str, str]] = json.loads(path.read_text()) if path.is_file() else []
    return data


def _read_json(path: Path, what: str) -> dict:  # type: ignore[type-arg]
    if not path.is_file():
        raise InputDataError(f"{what} not found at {path.name} in the workflow folder; did the earlier step run?")
    data: dict = json.loads(path.read_text())  # type: ignore[type-arg]
    return data


def prepare_report(ctx: KaapanaContext, params: PrepareReportParams) -> PrepareResult:
    """Collect the chain's summaries into the dataset's reports and drop the DICOM links (module docstring)."""
    stage = ctx.workflow_dir / params.stage_dir
    studies = _read_json(stage / STUDIES_FILE, f"the {params.stage_dir} record")
    cases: dict[str, str] = studies["cases"]
    out = Path(params.dataset_dir)
    manifest_path = out / "manifest.json"
    manifest = DatasetManifest.model_validate_json(manifest_path.read_text()) if manifest_path.is_file() else None
    quarantined = [
        {"kind": "study", "item": f["study"], "case": f["case"], "step": "retrieve", "reason": f["reason"]}
        for f in studies["retrieval_failed"]
    ] + [{"kind": "file", "step": "index", **f} for f in studies["unreadable_files"]]
    result = PrepareResult(
        studies_in=len(cases) + len(studies["retrieval_failed"]),
        prepared=len(manifest.cases) if manifest else 0,
        quarantined=quarantined,
        manifest=manifest,
    )
    for name in params.steps:
        path = ctx.workflow_dir / name / SUMMARY_FILE
        if not path.is_file():
            continue  # a step with no case to work on (skipped) writes no summary
        summary = StepSummary.from_json(json.loads(path.read_text()))
        result.steps.append(summary)
        for case, reason in sorted(summary.quarantined.items()):
            if name == params.stage_dir:
                continue  # retrieval failures, listed above
            item = cases.get(case, case)
            result.quarantined.append(
                {"kind": "study", "item": item, "case": case, "step": summary.step, "reason": reason}
            )
    _write_reports(out, ctx.batch_dir, params.select_dir, result)
    _drop_dicom(ctx, params)
    return result


def _drop_dicom(ctx: KaapanaContext, params: PrepareReportParams) -> None:
    """Remove the PACS mirror and the links to DICOM files (their paths may name patients)."""
    shutil.rmtree(ctx.workflow_dir / MIRROR_DIR, ignore_errors=True)
    if not ctx.batch_dir.is_dir():
        return
    for case_dir in ctx.batch_dir.iterdir():
        for links in (case_dir / params.stage_dir, case_dir / params.select_dir / "series"):
            shutil.rmtree(links, ignore_errors=True)


def _write_reports(out: Path, batch: Path, select_dir: str, result: PrepareResult) -> None:
    out.mkdir(parents=True, exist_ok=True)
    selections = []
    for case_dir in sorted(batch.iterdir()) if batch.is_dir() else []:
        sel = case_dir / select_dir / "selection.json"
        if sel.is_file():
            selections.append(json.loads(sel.read_text()))
    (out / "selection.json").write_text(json.dumps({"studies": selections}, indent=2))
    (out / "quarantine.json").write_text(json.dumps(result.quarantined, indent=2))
    summary = {
        "in": result.studies_in,
        "prepared": result.prepared,
        "quarantined": sum(1 for q in result.quarantined if q["kind"] == "study"),
        "unreadable_files": sum(1 for q in result.quarantined if q["kind"] == "file"),
        "steps": [s.to_json() for s in result.steps],
    }
    (out / "prepare-summary.json").write_text(json.dumps(summary, indent=2))
