"""``build-dataset``: collect prepared cases into a site dataset (``manifest.json`` + ``cases/``).

The train/test split is exact, stratified per task, seeded and frozen (see :mod:`cardiofm.pipeline.split`):
a case keeps the split it was given when it first entered the manifest, so adding cases never
reshuffles earlier ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cardiofm import __version__
from cardiofm.constants import MASK_TASKS, TASK_LANDMARKS
from cardiofm.contracts.dataset import CaseRecord, DatasetManifest, ManifestCase, SourceRef
from cardiofm.contracts.kaapana import KaapanaContext
from cardiofm.contracts.steps import BuildDatasetParams
from cardiofm.errors import ConfigError
from cardiofm.imaging.nifti import read_grid
from cardiofm.labels.formats import read_landmarks_json
from cardiofm.pipeline.case_steps import STUDY_FILE, load_site_config
from cardiofm.pipeline.runner import StepSummary, read_case_record, run_batch
from cardiofm.pipeline.split import Split, assign_splits

MANIFEST = "manifest.json"


def _tasks(landmarks: list[str], masks: list[str]) -> list[str]:
    """Landmark tasks whose every point is present, then the mask tasks held, in canonical order."""
    tasks = [t for t, names in TASK_LANDMARKS.items() if all(n in landmarks for n in names)]
    return tasks + [t for t in MASK_TASKS if t in masks]


def _copy_case(in_dir: Path, dest: Path, record: CaseRecord) -> ManifestCase:
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "labels").mkdir(parents=True)
    for name in ("image.nii.gz", "heart.nii.gz"):
        shutil.copyfile(in_dir / name, dest / name)
    landmarks: list[str] = []
    if (in_dir / "labels" / "landmarks.json").is_file():
        shutil.copyfile(in_dir / "labels" / "landmarks.json", dest / "labels" / "landmarks.json")
        landmarks = list(read_landmarks_json(dest / "labels" / "landmarks.json"))
    masks = [t for t in MASK_TASKS if (in_dir / "labels" / f"{t}.nii.gz").is_file()]
    for task in masks:
        shutil.copyfile(in_dir / "labels" / f"{task}.nii.gz", dest / "labels" / f"{task}.nii.gz")
    problems_file = in_dir / "labels" / "problems.json"
    record.label_problems = json.loads(problems_file.read_text()) if problems_file.is_file() else []
    (dest / "case.json").write_text(record.model_dump_json(indent=2))
    study = json.loads((in_dir / STUDY_FILE).read_text())
    grid = read_grid(dest / "image.nii.gz")
    return ManifestCase(
        case_id=record.case_id,
        split="train",
        tasks=_tasks(landmarks, masks),
        landmarks=landmarks,
        source=SourceRef(study_uid=study["study_uid"], series_uid=study["series_uid"]),
        shape=grid.shape,
        spacing_mm=grid.spacing_mm,
    )


def _site_id(params: BuildDatasetParams) -> str:
    if params.site_id:
        return params.site_id
    if params.site_config:
        return load_site_config(Path(params.site_config)).site_id
    raise ConfigError("build-dataset needs SITE_ID or SITE_CONFIG (the site's site.yaml, which names the site)")


def build_dataset(ctx: KaapanaContext, params: BuildDatasetParams) -> tuple[StepSummary, DatasetManifest]:
    """Copy every case of the batch into ``params.dataset_dir`` and write the manifest."""
    site_id = _site_id(params)
    root = Path(params.dataset_dir)
    previous: dict[str, Split] = {}
    if (root / MANIFEST).is_file():
        old = DatasetManifest.model_validate_json((root / MANIFEST).read_text())
        previous = {c.case_id: c.split for c in old.cases}
    entries: dict[str, ManifestCase] = {}

    def work(in_dir: Path, out_dir: Path, p: BuildDatasetParams) -> list[str]:
        case_dir = in_dir.parent
        record = read_case_record(case_dir)
        entry = _copy_case(in_dir, root / "cases" / case_dir.name, record)
        entries[entry.case_id] = entry
        (out_dir / "done").write_text(entry.case_id)
        return [f"case with tasks {entry.tasks or 'none'}"]

    summary = run_batch(ctx, params, work)
    splits = assign_splits(
        {c: e.tasks for c, e in entries.items()},
        seed=params.split_seed,
        test_fraction=params.test_fraction,
        frozen=previous,
    )
    manifest = DatasetManifest(
        site_id=site_id,
        created_with=f"cardiofm {__version__}",
        split_seed=params.split_seed,
        test_fraction=params.test_fraction,
        cases=[entries[k].model_copy(update={"split": splits[k]}) for k in sorted(entries)],
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return summary, manifest
