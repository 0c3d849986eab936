"""``stage-studies``: the first step of preparation; one case folder per study of the site's PACS.

Reads the site's local PACS folder, or mirrors every CT study from a DICOMweb or DIMSE PACS into
``$WORKFLOW_DIR/pacs-mirror`` first, then writes ``$WORKFLOW_DIR/$BATCH_NAME/<case-id>/$OPERATOR_OUT_DIR/``
with links to the study's files, the input of select-series. Case ids are pseudonymous (a hash of the
site and the study UID). ``$WORKFLOW_DIR/$OPERATOR_OUT_DIR/studies.json`` maps case ids to study UIDs and
lists the studies that could not be retrieved and the files that could not be read; it stays in the
work folder, whose DICOM links and mirror the ``prepare-report`` step removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from cardiofm.contracts.kaapana import KaapanaContext
from cardiofm.contracts.steps import StageStudiesParams
from cardiofm.dicom.index import file_key, index_folder
from cardiofm.dicom.pacs import mirror_all, open_source
from cardiofm.errors import ConfigError
from cardiofm.pipeline.case_steps import load_site_config
from cardiofm.pipeline.runner import StepSummary

#: Where studies pulled from a PACS are staged (inside ``$WORKFLOW_DIR``; removed by prepare-report).
MIRROR_DIR = "pacs-mirror"
#: The stage step's batch-level record (case → study UID, retrieval failures, unreadable files).
STUDIES_FILE = "studies.json"


def case_id_for(site_id: str, study_uid: str) -> str:
    """Pseudonymous, stable case id: a hash of the site and the study UID."""
    return "case-" + hashlib.sha256(f"{site_id}/{study_uid}".encode()).hexdigest()[:12]


def stage_studies(ctx: KaapanaContext, params: StageStudiesParams, env: Mapping[str, str]) -> StepSummary:
    """Stage every study as a case folder (see module docstring); ``env`` holds the PACS password variable."""
    start = time.perf_counter()
    config = Path(params.site_config)
    site = load_site_config(config)
    site_dir = Path(params.site_dir) if params.site_dir else config.parent
    source = open_source(params, env)
    summary = StepSummary(step=params.step)
    failed: list[dict[str, str]] = []
    if source is not None:
        pacs_root = ctx.workflow_dir / MIRROR_DIR
        shutil.rmtree(pacs_root, ignore_errors=True)
        mirrored = mirror_all(source, pacs_root)
        pacs_root.mkdir(parents=True, exist_ok=True)
        for lost in mirrored.failed:
            case = case_id_for(site.site_id, lost.study_uid)
            summary.quarantined[case] = lost.reason
            failed.append({"case": case, "study": lost.study_uid, "reason": lost.reason})
    else:
        pacs_root = site_dir / site.pacs.path
        if not pacs_root.is_dir():
            raise ConfigError(
                f"PACS folder '{site.pacs.path}' not found in the site folder; check pacs.path in site.yaml, "
                "or read the studies from the PACS with --dicomweb-url or --dimse (DICOMWEB_URL, DIMSE)"
            )
    index = index_folder(pacs_root)
    cases: dict[str, str] = {}
    for study in index.studies:
        case = case_id_for(site.site_id, study.study_uid)
        target = ctx.batch_dir / case / ctx.operator_out_dir
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        n = 0
        for series in study.series:
            for f in series.files:
                os.symlink(f.resolve(), target / f"{n:06d}.dcm")
                n += 1
        cases[case] = study.study_uid
        summary.done.append(case)
    # paths may name patients: files are reported by the hashed key the index logs them under
    unreadable = [{"item": file_key(pacs_root, p.path), "reason": p.problem} for p in index.problems]
    summary.seconds = time.perf_counter() - start
    ctx.step_dir.mkdir(parents=True, exist_ok=True)
    record = {"cases": cases, "retrieval_failed": failed, "unreadable_files": unreadable}
    (ctx.step_dir / STUDIES_FILE).write_text(json.dumps(record, indent=2))
    summary.write(ctx)
    return summary
