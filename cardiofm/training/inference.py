"""Inference with a checkpoint: per-head probabilities, decoded landmarks, masks.

Sliding-window probabilities per head, decoded landmarks (LPS mm) with confidence and calcification
masks — using the preprocessing stored in the checkpoint, never a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from cardiofm.constants import TASK_LANDMARKS
from cardiofm.imaging.geometry import Grid
from cardiofm.labels.encoding import DecodedPoint, decode_landmarks
from cardiofm.training.checkpoint import Checkpoint
from cardiofm.training.data import normalise_hu

F32 = npt.NDArray[np.float32]
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
    model: torch.nn.Module, image: F32, tasks: tuple[str, ...], roi: tuple[int, int, int], device: torch.device
) -> dict[str, F32]:
    """Softmax probabilities per head for a normalised image ``(i, j, k)``, by overlapping sliding windows."""
    from monai.inferers import sliding_window_inference

    x = torch.as_tensor(image[None, None], dtype=torch.float32, device=device)

    def predictor(patch: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(patch)
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


def predict_case(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    hu: F32,
    grid: Grid,
    *,
    device: torch.device,
    method: DecodeMethod = "largest_component",
) -> Prediction:
    """Probabilities, decoded landmarks and masks for one HU image already at the training spacing."""
    cfg = checkpoint.train_config
    tasks = tuple(checkpoint.model_config.heads)
    image = normalise_hu(hu, cfg.preprocessing)
    probs = predict_probabilities(model, image, tasks, cfg.patch_size, device)
    pred = Prediction(grid=grid, probabilities=probs)
    for task, p in probs.items():
        if task in TASK_LANDMARKS:
            pred.landmarks.update(decode_landmarks(p, TASK_LANDMARKS[task], grid, method=method))
        else:
            pred.masks[task] = (np.argmax(p, axis=0) > 0).astype(np.uint8)
    return pred
