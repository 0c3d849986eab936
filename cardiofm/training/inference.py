"""Inference with a checkpoint: per-head probabilities, decoded landmarks, masks.

Sliding-window probabilities per head, decoded landmarks (LPS mm) with confidence and binary masks
(calcification, coronaries) — using the preprocessing and the heart-conditioning mode stored in the
checkpoint, never a copy. :func:`predict_dataset_case` loads what the model needs (the CT and, for a
heart-conditioned model, the case's heart map) from a site dataset case folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from cardiofm.constants import TASK_LANDMARKS
from cardiofm.errors import InputDataError
from cardiofm.imaging.geometry import Grid
from cardiofm.labels.encoding import DecodedPoint, decode_landmarks
from cardiofm.models.config import HeartConditioning
from cardiofm.training.checkpoint import Checkpoint
from cardiofm.training.data import load_heart, load_image, normalise_hu

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
DecodeMethod = Literal["largest_component", "weighted"]


@dataclass
class Prediction:
    """Model output for one case on its (training-spacing) grid."""

    grid: Grid
    #: task → probabilities (C, i, j, k), channel 0 background.
    probabilities: dict[str, F32] = field(default_factory=dict)
    #: canonical landmark name → decoded point and confidence.
    landmarks: dict[str, DecodedPoint] = field(default_factory=dict)
    #: task → binary mask (uint8), for segmentation heads.
    masks: dict[str, npt.NDArray[np.uint8]] = field(default_factory=dict)


def predict_probabilities(
    model: torch.nn.Module,
    image: F32,
    tasks: tuple[str, ...],
    roi: tuple[int, int, int],
    device: torch.device,
    heart: U8 | None = None,
    heart_conditioning: HeartConditioning = "none",
) -> dict[str, F32]:
    """Softmax probabilities per head for a normalised image ``(i, j, k)``, by overlapping sliding windows.

    Parameters
    ----------
    model
        A model built from the checkpoint's config.
    image
        Normalised CT ``(i, j, k)``.
    tasks
        Heads to return.
    roi
        Sliding-window size, voxels (the training patch size).
    device
        Where the model runs.
    heart
        Heart label map (0..7) on the image's grid; needed unless ``heart_conditioning`` is ``none``.
    heart_conditioning
        The model's mode: the windows are conditioned exactly as the training patches were.

    Returns
    -------
    dict[str, numpy.ndarray]
        ``{task: (C, i, j, k) float32}``, channel 0 background.
    """
    from monai.inferers import sliding_window_inference

    from cardiofm.models.registry import conditioned_input

    channels = [image] if heart_conditioning == "none" else [image, _heart_on_image(heart, image, heart_conditioning)]
    x = torch.as_tensor(np.stack(channels)[None], dtype=torch.float32, device=device)

    def predictor(patch: torch.Tensor) -> dict[str, torch.Tensor]:
        # the heart travels as a second channel (windows are cut and padded by replication, never
        # interpolated) and becomes the model's conditioning channels here, window by window
        heart_patch = patch[:, 1:].round().long() if heart_conditioning != "none" else None
        out = model(conditioned_input(patch[:, :1], heart_patch, heart_conditioning))
        return {t: out[t][0] for t in tasks}

    model.eval()
    with torch.inference_mode():
        logits = sliding_window_inference(
            x,
            roi_size=roi,
            sw_batch_size=1,
            predictor=predictor,
            overlap=0.25,
            mode="gaussian",
            padding_mode="replicate",
        )
    if not isinstance(logits, dict):
        raise TypeError("sliding_window_inference returned no per-head dict")
    return {t: torch.softmax(logits[t].float(), dim=1)[0].cpu().numpy().astype(np.float32) for t in tasks}


def _heart_on_image(heart: U8 | None, image: F32, mode: str) -> F32:
    if heart is None:
        raise InputDataError(
            f"the model is heart-conditioned (heart_conditioning={mode!r}) but no heart map was given; "
            "use predict_dataset_case, or pass the case's heart.nii.gz on the image grid as heart="
        )
    if heart.shape != image.shape:
        raise InputDataError(f"heart map {heart.shape} and image {image.shape} must lie on the same grid")
    return np.asarray(heart, dtype=np.float32)


def predict_case(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    hu: F32,
    grid: Grid,
    *,
    device: torch.device,
    method: DecodeMethod = "largest_component",
    heart: U8 | None = None,
) -> Prediction:
    """Probabilities, decoded landmarks and masks for one HU image already at the training spacing.

    ``heart`` (the case's heart label map on ``grid``) is required when the checkpoint's model is
    heart-conditioned; :func:`predict_dataset_case` loads it for a dataset case.
    """
    cfg = checkpoint.train_config
    tasks = tuple(checkpoint.model_config.heads)
    image = normalise_hu(hu, cfg.preprocessing)
    mode = checkpoint.model_config.heart_conditioning
    probs = predict_probabilities(model, image, tasks, cfg.patch_size, device, heart=heart, heart_conditioning=mode)
    pred = Prediction(grid=grid, probabilities=probs)
    for task, p in probs.items():
        if task in TASK_LANDMARKS:
            pred.landmarks.update(decode_landmarks(p, TASK_LANDMARKS[task], grid, method=method))
        else:
            pred.masks[task] = (np.argmax(p, axis=0) > 0).astype(np.uint8)
    return pred


def predict_dataset_case(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    case_dir: Path,
    *,
    device: torch.device,
    method: DecodeMethod = "largest_component",
) -> Prediction:
    """Predict one case folder of a site dataset (``cases/<case-id>/``).

    Loads the CT at the checkpoint's training spacing and, when the checkpoint's model is heart-conditioned,
    the case's ``heart.nii.gz`` on the same grid; the caller passes nothing else.

    Raises
    ------
    InputDataError
        If the image is unreadable, or the model is heart-conditioned and the case has no heart map.
    """
    pre = checkpoint.train_config.preprocessing
    hu, grid = load_image(case_dir, pre)
    mode = checkpoint.model_config.heart_conditioning
    heart = load_heart(case_dir, grid, mode) if mode != "none" else None
    return predict_case(checkpoint, model, hu, grid, device=device, method=method, heart=heart)
