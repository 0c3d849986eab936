"""What the MONAI bundle's ``inference.json`` runs: thin wrappers over cardiofm's own inference.

``load_network`` builds the released model; ``run_inference`` reads one heart-cropped CT NIfTI (HU), puts it
on the model's grid (canonical axis order, training spacing; no heart crop), runs
:func:`cardiofm.training.inference.predict_case` (normalisation from the release's preprocessing config,
sliding windows, landmark decoding) and writes the results to ``output_dir``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from cardiofm.errors import InputDataError
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.nifti import load_nifti, save_nifti
from cardiofm.imaging.resample import resample_onto
from cardiofm.labels.formats.landmarks_json import write_landmarks_json
from cardiofm.release.folder import load_release
from cardiofm.training.checkpoint import Checkpoint
from cardiofm.training.data import on_training_grid
from cardiofm.training.inference import Prediction, predict_case

logger = logging.getLogger(__name__)


def load_network(bundle_root: str, device: str = "cpu") -> torch.nn.Module:
    """The released model (weights checked against their sha256), in eval mode on ``device``."""
    return load_release(Path(bundle_root)).build(device)


def load_ct(path: Path, ckpt: Checkpoint) -> tuple[npt.NDArray[np.float32], Grid]:
    """A CT NIfTI (HU) on the model's grid: canonical axis order, the training spacing (linear interpolation)."""
    if not path.is_file():
        raise InputDataError(f"input image {path.name} not found; pass --input_image <CT NIfTI in HU>")
    data, grid = load_nifti(path, float32=True)
    return on_training_grid(np.asarray(data, dtype=np.float32), grid, ckpt.train_config.preprocessing)


def _heart_on(path: Path, grid: Grid) -> npt.NDArray[np.uint8]:
    labels, hgrid = load_nifti(path)
    on_grid = resample_onto(np.rint(np.asarray(labels)).astype(np.uint8), hgrid, grid, order=0, fill_value=0)
    return np.asarray(on_grid, dtype=np.uint8)


def run_inference(
    bundle_root: str,
    input_image: str,
    output_dir: str,
    device: str = "cpu",
    heart_image: str | None = None,
) -> Path:
    """Predict one CT with the release in ``bundle_root``; write its results to ``output_dir``.

    Writes ``landmarks.json`` (LPS mm), ``prediction.json`` (landmark confidences, the grid, the files),
    ``foreground-<head>.nii.gz`` (1 - background probability) for every head and ``mask-<head>.nii.gz`` for
    segmentation heads, all on the model's grid.

    Parameters
    ----------
    bundle_root
        The release folder.
    input_image
        Heart-cropped CT NIfTI, HU.
    output_dir
        Where the results go (created).
    device
        ``cpu`` or a CUDA device.
    heart_image
        Heart label map (0..7) NIfTI; needed by a heart-conditioned model only.

    Returns
    -------
    Path
        The ``prediction.json`` written.
    """
    ckpt = load_release(Path(bundle_root))
    hu, grid = load_ct(Path(input_image), ckpt)
    heart = _heart_on(Path(heart_image), grid) if heart_image else None
    torch_device = torch.device(device)
    pred = predict_case(ckpt, ckpt.build(torch_device), hu, grid, device=torch_device, heart=heart)
    return write_prediction(pred, Path(output_dir))


def write_prediction(pred: Prediction, out: Path) -> Path:
    """The files of :func:`run_inference` for one prediction; returns ``prediction.json``."""
    out.mkdir(parents=True, exist_ok=True)
    files = [write_landmarks_json(out / "landmarks.json", {n: p.lps_mm for n, p in pred.landmarks.items()}).name]
    for task, probs in pred.probabilities.items():
        files.append(save_nifti(out / f"foreground-{task}.nii.gz", (1.0 - probs[0]).astype(np.float32), pred.grid).name)
    for task, mask in pred.masks.items():
        files.append(save_nifti(out / f"mask-{task}.nii.gz", mask, pred.grid).name)
    summary = {
        "landmarks": {n: {"lps_mm": list(p.lps_mm), "confidence": p.confidence} for n, p in pred.landmarks.items()},
        "grid": {"shape": list(pred.grid.shape), "spacing_mm": list(pred.grid.spacing_mm)},
        "files": files,
    }
    path = out / "prediction.json"
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %d result files to %s", len(files) + 1, out.name)
    return path
