"""``cardiofm prepare``: the whole data-preparation chain for one site, on Kaapana's batch layout.

The site's PACS folder is indexed once; each study becomes a case folder
``OUT/work/batch/<case-id>/pacs/`` (links to its files), and the same steps a Kaapana DAG runs —
select-series, convert, crop-heart, import-labels, build-dataset — run over that batch in turn.
Results: ``OUT/manifest.json`` and ``OUT/cases/`` (the dataset), ``OUT/selection.json`` (per study:
the chosen series or none, and every rejected series with its reasons) and ``OUT/quarantine.json``
(every study or file that did not make it, with its reason). Always: in = prepared + quarantined.

No patient identifier is left in ``OUT``: studies pulled from a PACS are staged in
``OUT/work/pacs-mirror`` and removed with the links to DICOM files (whose paths may name patients)
once the chain has run; ``study.json`` carries keyed hashes only (:mod:`cardiofm.pipeline.match_keys`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cardiofm.contracts.dataset import DatasetManifest
from cardiofm.contracts.kaapana import KaapanaContext
from cardiofm.contracts.steps import (
    BuildDatasetParams,
    ConvertParams,
    CropHeartParams,
    ImportLabelsParams,
    SelectSeriesParams,
    StepParams,
)
from cardiofm.dicom.index import file_key, index_folder
from cardiofm.dicom.pacs import PacsSource, mirror_all
from cardiofm.errors import ConfigError
from cardiofm.pipeline.case_steps import convert_case, crop_case, load_site_config, select_case
from cardiofm.pipeline.dataset_step import build_dataset
from cardiofm.pipeline.labels_step import import_labels_case
from cardiofm.pipeline.runner import CaseFunction, StepSummary, run_batch

logger = logging.getLogger(__name__)

#: Folder names of the chain: each step reads the previous name and writes the next.
CHAIN_DIRS = ("pacs", "select-series", "convert", "crop-heart", "import-labels")
#: Where studies pulled from a PACS are staged (inside ``OUT/work``; removed after the chain).
MIRROR_DIR = "pacs-mirror"


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


def case_id_for(site_id: str, study_uid: str) -> str:
    """Pseudonymous, stable case id: a hash of the site and the study UID."""
    return "case-" + hashlib.sha256(f"{site_id}/{study_uid}".encode()).hexdigest()[:12]


def _stage_batch(pacs_root: Path, batch: Path, site_id: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """One case folder per study with links to its files; returns case→study UID and unreadable files."""
    index = index_folder(pacs_root)
    cases: dict[str, str] = {}
    for study in index.studies:
        case = case_id_for(site_id, study.study_uid)
        target = batch / case / "pacs"
        target.mkdir(parents=True)
        n = 0
        for series in study.series:
            for f in series.files:
                os.symlink(f.resolve(), target / f"{n:06d}.dcm")
                n += 1
        cases[case] = study.study_uid
    files = [
        # paths may name patients: files are reported by the hashed key the index logs them under
        {"kind": "file", "item": file_key(pacs_root, p.path), "step": "index", "reason": p.problem}
        for p in index.problems
    ]
    return cases, files


def prepare_site(
    site_dir: Path,
    out: Path,
    *,
    config: Path | None = None,
    crop: CropHeartParams | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.2,
    on_case: Callable[[str, str], None] | None = None,
    source: PacsSource | None = None,
) -> PrepareResult:
    """Prepare one site's dataset from its PACS and annotations (see module docstring).

    ``source`` (DICOMweb or DIMSE) is mirrored into ``OUT/work/pacs-mirror`` first (and removed after); without it the
    site's local PACS folder (``pacs.path`` in ``site.yaml``) is read.
    """
    config_path = config or site_dir / "site.yaml"
    site = load_site_config(config_path)
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    retrieval_failed: list[dict[str, str]] = []
    if source is not None:
        mirror = work / MIRROR_DIR
        mirrored = mirror_all(source, mirror)
        retrieval_failed = [
            {
                "kind": "study",
                "item": f.study_uid,
                "case": case_id_for(site.site_id, f.study_uid),
                "step": "retrieve",
                "reason": f.reason,
            }
            for f in mirrored.failed
        ]
        pacs_root = mirror
        mirror.mkdir(parents=True, exist_ok=True)
    else:
        pacs_root = site_dir / site.pacs.path
    if not pacs_root.is_dir():
        raise ConfigError(
            f"PACS folder '{site.pacs.path}' not found in the site folder; check pacs.path in site.yaml, "
            "or read the studies from the PACS with --dicomweb-url or --dimse"
        )
    batch = work / "batch"
    batch.mkdir(parents=True)
    cases, bad_files = _stage_batch(pacs_root, batch, site.site_id)
    chain: list[tuple[StepParams, CaseFunction]] = [  # type: ignore[type-arg]
        (SelectSeriesParams(site_config=str(config_path)), select_case),
        (ConvertParams(), convert_case),
        (crop or CropHeartParams(), crop_case),
        (ImportLabelsParams(site_config=str(config_path), site_dir=str(site_dir)), import_labels_case),
    ]
    result = PrepareResult(
        studies_in=len(cases) + len(retrieval_failed), prepared=0, quarantined=retrieval_failed + bad_files
    )
    for n, (params, fn) in enumerate(chain):
        ctx = KaapanaContext(
            workflow_dir=work, operator_in_dir=CHAIN_DIRS[n], operator_out_dir=CHAIN_DIRS[n + 1], task_id=params.step
        )
        summary = run_batch(ctx, params, fn, on_case=_per_step(on_case, params.step))
        result.steps.append(summary)
        for case, reason in sorted(summary.quarantined.items()):
            result.quarantined.append(
                {"kind": "study", "item": cases[case], "case": case, "step": params.step, "reason": reason}
            )
    ctx = KaapanaContext(
        workflow_dir=work, operator_in_dir=CHAIN_DIRS[-1], operator_out_dir="build-dataset", task_id="build-dataset"
    )
    ds_params = BuildDatasetParams(
        dataset_dir=str(out), site_id=site.site_id, split_seed=split_seed, test_fraction=test_fraction
    )
    summary, manifest = build_dataset(ctx, ds_params)
    _drop_dicom(work, batch)
    result.steps.append(summary)
    result.prepared = len(manifest.cases)
    result.manifest = manifest
    _write_reports(out, batch, result)
    return result


def _drop_dicom(work: Path, batch: Path) -> None:
    """Remove the PACS mirror and the links to DICOM files (their paths may name patients) from the work folder."""
    shutil.rmtree(work / MIRROR_DIR, ignore_errors=True)
    for case_dir in batch.iterdir():
        for links in (case_dir / CHAIN_DIRS[0], case_dir / CHAIN_DIRS[1] / "series"):
            shutil.rmtree(links, ignore_errors=True)


def _per_step(on_case: Callable[[str, str], None] | None, step: str) -> Callable[[str], None] | None:
    if on_case is None:
        return None
    callback = on_case

    def report(case: str) -> None:
        callback(step, case)

    return report


def _write_reports(out: Path, batch: Path, result: PrepareResult) -> None:
    selections = []
    for case_dir in sorted(batch.iterdir()):
        sel = case_dir / "select-series" / "selection.json"
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
