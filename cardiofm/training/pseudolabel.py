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

import numpy as np

from cardiofm.constants import TASK_LANDMARKS
from cardiofm.contracts.dataset import ManifestCase
from cardiofm.labels.encoding import encode_landmarks
from cardiofm.training.checkpoint import load_checkpoint
from cardiofm.training.config import TrainConfig
from cardiofm.training.data import F32, Sample, landmark_encoding, load_manifest
from cardiofm.training.inference import predict_dataset_case
from cardiofm.training.trainer import resolve_device

logger = logging.getLogger(__name__)


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

    Soft probabilities always join (for the distillation term); a hard target is re-encoded from
    the decoded landmarks only when every point reaches ``cfg.min_confidence`` (masks: argmax).
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
            points = info.get("points", {})
            names = TASK_LANDMARKS[task]
            if all(n in points and points[n]["confidence"] >= cfg.min_confidence for n in names):
                xyz = {n: tuple(points[n]["lps_mm"]) for n in names}
                sample.targets[task] = np.asarray(
                    encode_landmarks(xyz, names, sample.grid, landmark_encoding(cfg.encoding)), dtype=np.uint8
                )
        else:
            sample.targets[task] = (np.argmax(probs, axis=0) > 0).astype(np.uint8)
    return sample
