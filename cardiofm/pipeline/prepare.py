"""``cardiofm prepare``: the whole data-preparation chain for one site, on Kaapana's batch layout.

The same steps the ``cardiofm-prepare`` DAG runs, in the same order and with the same folders, run here in
one process over ``OUT/work``: stage-studies (one case folder per study of the site's PACS folder, or of a
DICOMweb / DIMSE PACS mirrored into ``OUT/work/pacs-mirror``), select-series, convert, crop-heart,
import-labels, build-dataset (``OUT/manifest.json``, ``OUT/cases/``) and prepare-report (``OUT/selection.json``,
``OUT/quarantine.json``, ``OUT/prepare-summary.json``; the mirror and the DICOM links removed). Always:
in = prepared + quarantined. No patient identifier is left in ``OUT`` (``study.json`` carries keyed hashes only,
see :mod:`cardiofm.pipeline.match_keys`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from cardiofm.contracts.kaapana import FIRST_INPUT_DIR, KaapanaContext
from cardiofm.contracts.pacs import PacsParams
from cardiofm.contracts.steps import (
    BuildDatasetParams,
    ConvertParams,
    CropHeartParams,
    ImportLabelsParams,
    PrepareReportParams,
    SelectSeriesParams,
    StageStudiesParams,
    StepParams,
)
from cardiofm.pipeline.case_steps import convert_case, crop_case, load_site_config, select_case
from cardiofm.pipeline.dataset_step import build_dataset
from cardiofm.pipeline.labels_step import import_labels_case
from cardiofm.pipeline.report_step import PrepareResult, prepare_report
from cardiofm.pipeline.runner import CaseFunction, run_batch
from cardiofm.pipeline.stage_step import case_id_for, stage_studies

__all__ = ["PrepareResult", "case_id_for", "prepare_site"]

logger = logging.getLogger(__name__)


def prepare_site(
    site_dir: Path,
    out: Path,
    *,
    config: Path | None = None,
    crop: CropHeartParams | None = None,
    split_seed: int = 0,
    test_fraction: float = 0.2,
    on_case: Callable[[str, str], None] | None = None,
    pacs: PacsParams | None = None,
) -> PrepareResult:
    """Prepare one site's dataset from its PACS and annotations (see module docstring).

    ``pacs`` names a DICOMweb or DIMSE PACS (its password variable is read from the environment); without it
    the site's local PACS folder (``pacs.path`` in ``site.yaml``) is read.
    """
    config_path = config or site_dir / "site.yaml"
    site = load_site_config(config_path)
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    stage = StageStudiesParams(
        site_config=str(config_path), site_dir=str(site_dir), **(pacs or PacsParams()).model_dump()
    )
    stage_studies(_context(work, FIRST_INPUT_DIR, stage), stage, os.environ)
    chain: list[tuple[StepParams, CaseFunction]] = [  # type: ignore[type-arg]
        (SelectSeriesParams(site_config=str(config_path)), select_case),
        (ConvertParams(), convert_case),
        (crop or CropHeartParams(), crop_case),
        (ImportLabelsParams(site_config=str(config_path), site_dir=str(site_dir)), import_labels_case),
    ]
    previous: StepParams = stage
    for params, fn in chain:
        run_batch(_context(work, previous.step, params), params, fn, on_case=_per_step(on_case, params.step))
        previous = params
    ds_params = BuildDatasetParams(
        dataset_dir=str(out), site_id=site.site_id, split_seed=split_seed, test_fraction=test_fraction
    )
    build_dataset(_context(work, previous.step, ds_params), ds_params)
    report = PrepareReportParams(dataset_dir=str(out))
    return prepare_report(_context(work, ds_params.step, report), report)


def _context(work: Path, in_dir: str, params: StepParams) -> KaapanaContext:
    """The step's context as the DAG gives it: its output folder and task id are its name."""
    return KaapanaContext(workflow_dir=work, operator_in_dir=in_dir, operator_out_dir=params.step, task_id=params.step)


def _per_step(on_case: Callable[[str, str], None] | None, step: str) -> Callable[[str], None] | None:
    if on_case is None:
        return None
    callback = on_case

    def report(case: str) -> None:
        callback(step, case)

    return report
