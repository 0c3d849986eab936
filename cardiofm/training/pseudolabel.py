"""Pseudo-labels: a teacher's predictions on every case of a site dataset, stored compactly.

Per case and teacher task: ``<out>/<task>/<case-id>.npz`` holds the softmax probabilities quantised
to uint8 (0–255, channel 0 background; zlib-compressed, so mostly-background maps cost little) on
the training grid, and ``<out>/<task>/<case-id>.json`` the decoded landmarks (LPS mm) with their
confidence, or the mask volume. Nothing here leaves the site.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cardiofm.constants import IGNORE_LABEL, TASK_LANDMARKS
from cardiofm.contracts.dataset import ManifestCase
from cardiofm.imaging.geometry import as_point
from cardiofm.labels.encoding import encode_landmarks
from cardiofm.training.checkpoint import load_checkpoint
from cardiofm.training.config import TrainConfig
from cardiofm.training.data import F32, Sample, landmark_encoding, load_manifest
from cardiofm.training.inference import predict_dataset_case
from cardiofm.training.trainer import resolve_device

logger = logging.getLogger(__name__)

#: Teacher probability from which a voxel may belong to a landmark the teacher did not find (ignored there).
UNSURE_PROBABILITY = 0.1


def pseudolabel_dataset(
    checkpoint_path: Path, dataset_dir: Path, out: Path, on_case: Callable[[str], None] | None = None
) -> dict[str, int]:
    """Run the teacher on every case of the dataset; returns the number of cases per task written."""
    ckpt = load_checkpoint(checkpoint_path)
    device = resolve_device(ckpt.train_config.device)
    model = ckpt.build(device)
    manifest = load_manifest(dataset_dir)
    written: dict[str, int] = {}
    for case in manifest.cases:
        pred = predict_dataset_case(ckpt, model, dataset_dir / "cases" / case.case_id, device=device)
        for task, probs in pred.probabilities.items():
            folder = out / task
            folder.mkdir(parents=True, exist_ok=True)
            quantised = np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)
            np.savez_compressed(folder / f"{case.case_id}.npz", probabilities=quantised)
            info: dict[str, object] = {"task": task, "teacher": checkpoint_path.name}
            if task in TASK_LANDMARKS:
                info["points"] = {
                    n: {"lps_mm": list(p.lps_mm), "confidence": p.confidence}
                    for n, p in pred.landmarks.items()
                    if n in TASK_LANDMARKS[task]
                }
            else:
                info["voxels"] = int(pred.masks[task].sum())
            (folder / f"{case.case_id}.json").write_text(json.dumps(info, indent=2))
            written[task] = written.get(task, 0) + 1
        if on_case is not None:
            on_case(case.case_id)
    logger.info("pseudo-labelled %d case(s): %s", len(manifest.cases), written)
    return written


def attach_pseudolabels(sample: Sample, case: ManifestCase, pseudo_dir: Path, cfg: TrainConfig) -> Sample:
    """Add teacher targets to a sample for each trained task the case has no real label for.

    Soft probabilities always join (for the distillation term). The hard landmark target is re-encoded
    from the decoded points that reach ``cfg.min_confidence``. A less certain point is taught only where
    the teacher's argmax gives it, the rest of its sphere being :data:`~cardiofm.constants.IGNORE_LABEL`
    (neither landmark nor background for the hard loss; the soft term still applies); a landmark the
    teacher did not find is ignored wherever the teacher gives it at least ``UNSURE_PROBABILITY``. So one
    uncertain point no longer costs the case the hard targets of its other landmarks. Masks: the
    teacher's argmax.
    """
    for task in cfg.tasks:
        npz = pseudo_dir / task / f"{case.case_id}.npz"
        if not npz.is_file():
            continue
        with np.load(npz) as data:
            probs: F32 = data["probabilities"].astype(np.float32) / 255.0
        if probs.shape[1:] != sample.image.shape:
            logger.warning("pseudo-label %s of case %s is on another grid; ignored", task, case.case_id)
            continue
        sample.soft[task] = probs
        if task in sample.targets:
            continue
        info = json.loads(npz.with_suffix(".json").read_text())
        if task in TASK_LANDMARKS:
            sample.targets[task] = _landmark_target(info.get("points", {}), probs, TASK_LANDMARKS[task], sample, cfg)
        else:
            sample.targets[task] = (np.argmax(probs, axis=0) > 0).astype(np.uint8)
    return sample


def _landmark_target(
    points: dict[str, Any], probs: F32, names: tuple[str, ...], sample: Sample, cfg: TrainConfig
) -> npt.NDArray[np.uint8]:
    """Spheres at the confident points; the unsure landmarks' regions ignored (see :func:`attach_pseudolabels`)."""
    xyz = {n: as_point(points[n]["lps_mm"]) for n in names if n in points}
    spheres = np.asarray(encode_landmarks(xyz, names, sample.grid, landmark_encoding(cfg.encoding)), dtype=np.uint8)
    sure = [n for n in xyz if float(points[n]["confidence"]) >= cfg.min_confidence]
    target = np.where(np.isin(spheres, [names.index(n) + 1 for n in sure]), spheres, 0).astype(np.uint8)
    unsure = [n for n in names if n not in sure]
    teacher = np.argmax(probs, axis=0)
    for name in unsure:
        label = names.index(name) + 1
        if name in xyz:  # taught as far as the teacher segmented it, the rest of its sphere left open
            sphere = spheres == label
            target[sphere] = IGNORE_LABEL
            target[sphere & (teacher == label)] = label
        else:  # not found: open wherever the teacher gives it some probability
            target[probs[label] >= UNSURE_PROBABILITY] = IGNORE_LABEL
    if unsure:
        logger.debug("case %s: %d unsure landmark(s) left partly open in the hard target", sample.case_id, len(unsure))
    return target
