"""``stage-series``: the first step of ``cardiofm-predict``; one batch folder per requested series.

Retrieves each series from the PACS (DICOMweb or DIMSE, as preparation reads it) or finds it in a local
DICOM folder, and writes ``$WORKFLOW_DIR/$BATCH_NAME/<series key>/$OPERATOR_OUT_DIR/series/*.dcm``, the
input of the convert step. The folder name is a hash of the Series Instance UID (no identifier in a
path). A series that cannot be found or retrieved is quarantined with its reason; the others go on.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from cardiofm.contracts.kaapana import KaapanaContext
from cardiofm.contracts.predict import StageSeriesParams
from cardiofm.dicom.index import hashed, index_folder
from cardiofm.errors import CardioFMError, ConfigError, InputDataError
from cardiofm.pipeline.runner import QUARANTINE_MARKER, StepSummary


def series_key(series_uid: str) -> str:
    """The batch folder name of a series: ``series-<hash of its UID>``."""
    return f"series-{hashed(series_uid)}"


def _from_folder(folder: Path) -> dict[str, tuple[Path, ...]]:
    if not folder.is_dir():
        raise ConfigError(f"DICOM folder {folder} not found; check DICOM_FOLDER, or give DICOMWEB_URL or DIMSE")
    return {s.series_uid: s.files for study in index_folder(folder).studies for s in study.series}


def stage_series(ctx: KaapanaContext, params: StageSeriesParams, env: Mapping[str, str]) -> StepSummary:
    """Stage every series of ``params.series_uids`` (see the module docstring)."""
    from cardiofm.dicom.pacs import open_source
    from cardiofm.prediction.inputs import fetch_from_pacs

    start = time.perf_counter()
    summary = StepSummary(step=params.step)
    source = open_source(params, env)
    if source is None and not params.dicom_folder:
        raise ConfigError("stage-series needs where the series are: DICOMWEB_URL, DIMSE, or DICOM_FOLDER")
    local = _from_folder(Path(params.dicom_folder)) if source is None and params.dicom_folder else {}
    for uid in params.series_uids:
        key = series_key(uid)
        target = ctx.batch_dir / key / ctx.operator_out_dir
        shutil.rmtree(target, ignore_errors=True)
        (target / "series").mkdir(parents=True)
        try:
            if source is None:
                if uid not in local:
                    raise InputDataError("series not found in the DICOM folder; check the Series Instance UID")
                for n, f in enumerate(local[uid]):
                    os.symlink(f.resolve(), target / "series" / f"{n:06d}.dcm")
            else:
                fetch_from_pacs(params, uid, target / "series", env=env)
                for n, f in enumerate(sorted((target / "series" / "dicom").iterdir())):
                    f.rename(target / "series" / f"{n:06d}.dcm")
                (target / "series" / "dicom").rmdir()
        except CardioFMError as exc:
            # the batch folder stays, marked, so every later step skips it and the run's record shows why
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            marker = {"step": params.step, "reason": str(exc), "error": type(exc).__name__}
            (target / QUARANTINE_MARKER).write_text(json.dumps(marker, indent=2))
            summary.quarantined[key] = str(exc)
            continue
        summary.done.append(key)
    summary.seconds = time.perf_counter() - start
    summary.write(ctx)
    return summary
