"""Evaluate a checkpoint on a site dataset: landmark errors (mm) with failure rates, Dice of mask heads.

Mask heads are calcification and the downstream coronary-artery head; a case whose truth and prediction
are both empty scores Dice 1.

Truth comes from the dataset's own labels, or — for synthetic federations, evaluation only — from
the phantom generator's ``ground_truth/`` (every landmark of every case, labelled or not).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cardiofm.constants import MASK_TASKS, TASK_LANDMARKS
from cardiofm.contracts.dataset import ManifestCase
from cardiofm.contracts.landmarks import Point3
from cardiofm.evaluation.metrics import dice, landmark_errors_mm, summarise_errors
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.nifti import load_nifti
from cardiofm.imaging.resample import resample_onto
from cardiofm.labels.formats import read_landmarks_json
from cardiofm.training.checkpoint import load_checkpoint
from cardiofm.training.data import load_manifest
from cardiofm.training.inference import predict_dataset_case
from cardiofm.training.trainer import resolve_device

logger = logging.getLogger(__name__)


@dataclass
class Truth:
    """Reference labels of one case (any may be absent)."""

    points: dict[str, Point3] = field(default_factory=dict)
    #: mask task (:data:`~cardiofm.constants.MASK_TASKS`) → NIfTI mask file.
    masks: dict[str, Path] = field(default_factory=dict)


TruthSource = Callable[[Path, ManifestCase], Truth]


def dataset_truth(dataset_dir: Path, case: ManifestCase) -> Truth:
    """The labels the dataset holds for the case (only for its labelled tasks)."""
    case_dir = dataset_dir / "cases" / case.case_id
    points: dict[str, Point3] = {}
    if (case_dir / "labels" / "landmarks.json").is_file():
        all_points = read_landmarks_json(case_dir / "labels" / "landmarks.json")
        labelled = {n for t in case.tasks for n in TASK_LANDMARKS.get(t, ())}
        points = {n: p for n, p in all_points.items() if n in labelled}
    masks = {t: case_dir / "labels" / f"{t}.nii.gz" for t in MASK_TASKS if t in case.tasks}
    return Truth(points, {t: p for t, p in masks.items() if p.is_file()})


def phantom_truth(federation_dir: Path) -> TruthSource:
    """Truth from a synthetic federation's ``ground_truth/`` (matched by StudyInstanceUID)."""
    record = json.loads((federation_dir / "federation.json").read_text())
    by_study = {s["study_uid"]: s["case_id"] for site in record["sites"] for s in site["studies"]}

    def source(_dataset_dir: Path, case: ManifestCase) -> Truth:
        gt = federation_dir / "ground_truth" / by_study[case.source.study_uid]
        return Truth(read_landmarks_json(gt / "landmarks.json"), {t: gt / f"{t}.nii.gz" for t in MASK_TASKS})

    return source


def _mask_on(path: Path, grid: Grid) -> np.ndarray:
    mask, mgrid = load_nifti(path)
    return np.asarray(resample_onto((np.asarray(mask) > 0).astype(np.uint8), mgrid, grid, order=0, fill_value=0))


def evaluate_dataset(
    checkpoint_path: Path,
    dataset_dir: Path,
    *,
    split: str = "test",
    truth: TruthSource = dataset_truth,
    on_case: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Metrics of the checkpoint on the cases of ``split`` (``"all"`` for every case)."""
    ckpt = load_checkpoint(checkpoint_path)
    device = resolve_device(ckpt.train_config.device)
    model = ckpt.build(device)
    manifest = load_manifest(dataset_dir)
    errors: dict[str, list[dict[str, float]]] = {t: [] for t in ckpt.model_config.heads if t in TASK_LANDMARKS}
    dices: dict[str, list[float]] = {t: [] for t in ckpt.model_config.heads if t in MASK_TASKS}
    n_cases = 0
    for case in manifest.cases:
        if split != "all" and case.split != split:
            continue
        ref = truth(dataset_dir, case)
        pred = predict_dataset_case(ckpt, model, dataset_dir / "cases" / case.case_id, device=device)
        predicted = {n: p.lps_mm for n, p in pred.landmarks.items()}
        for task in errors:
            names = [n for n in TASK_LANDMARKS[task] if n in ref.points]
            if names:
                errors[task].append(landmark_errors_mm(predicted, ref.points, names))
        for task, per_case_dice in dices.items():
            if task in pred.masks and task in ref.masks:
                per_case_dice.append(dice(pred.masks[task], _mask_on(ref.masks[task], pred.grid)))
        n_cases += 1
        if on_case is not None:
            on_case(case.case_id)
    report: dict[str, object] = {"checkpoint": checkpoint_path.name, "split": split, "cases": n_cases}
    for task, per_case in errors.items():
        if not per_case:
            report[task] = {"n": 0}
            continue
        summary = summarise_errors(per_case, list(TASK_LANDMARKS[task]))
        report[task] = {
            "per_landmark": {n: s.as_dict() for n, s in summary.items() if n != "pooled"},
            "pooled": summary["pooled"].as_dict(),
        }
    for task, values in dices.items():
        report[task] = {
            "n": len(values),
            "dice_mean": float(np.mean(values)) if values else float("nan"),
            "dice_median": float(np.median(values)) if values else float("nan"),
        }
    return report
