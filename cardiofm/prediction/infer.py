"""One CT through one or more models: landmarks in LPS mm and the calcification mask on the input's own grid.

Each model predicts on its own training grid (its spacing, the canonical axis order: exactly how it was
trained, through :func:`cardiofm.training.inference.predict_dataset_case`); the results are then mapped back:
points are world coordinates already, and the calcification probability is interpolated onto the native
grid of the CT the user gave (only over the crop's extent; zero elsewhere) and thresholded there.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cardiofm import __version__
from cardiofm.constants import TASK_LANDMARKS
from cardiofm.contracts.measurements import ModelInfo, PredictedLandmarks
from cardiofm.errors import ConfigError
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.resample import resample_onto
from cardiofm.training.checkpoint import Checkpoint

logger = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]
#: Default lowest decoder confidence of a placed point; below it the point is listed as missing.
DEFAULT_MIN_CONFIDENCE = 0.3


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to predict: its checkpoint, where it came from and the hash of its weights."""

    checkpoint: Checkpoint
    info: ModelInfo


@dataclass
class NativePrediction:
    """What the models found in one CT, on the CT's native grid."""

    landmarks: PredictedLandmarks
    native_grid: Grid
    #: Binary calcification mask on ``native_grid`` (None: no model has a calcification head).
    calcification: U8 | None = None
    #: Seconds per stage (``inference``, ``to_native``).
    seconds: dict[str, float] = field(default_factory=dict)


def load_models(paths: Sequence[Path]) -> list[LoadedModel]:
    """Load each ``--model``: a checkpoint file (``.pt``) or a model release folder.

    Raises
    ------
    ConfigError
        No model given, or two models with the same head (say which one to use).
    InputDataError
        A file that is not a cardiofm model (from the loader, naming the file).
    """
    from cardiofm.release.folder import WEIGHTS_FILE, is_release, load_model, sha256_of

    if not paths:
        raise ConfigError("give at least one --model: a checkpoint (.pt) or a model release folder")
    models: list[LoadedModel] = []
    seen: dict[str, str] = {}
    for path in paths:
        ckpt = load_model(path)
        for head in ckpt.model_config.heads:
            if head in seen:
                raise ConfigError(
                    f"models {seen[head]} and {path.name} both predict {head!r}: give one model per head "
                    "(a student holds every head; teachers one each)"
                )
            seen[head] = path.name
        weights = path / WEIGHTS_FILE if is_release(path) else path
        info = ModelInfo(
            name=path.stem if path.is_file() else path.name,
            version=ckpt.created_with.removeprefix("cardiofm ").strip() or __version__,
            sha256=sha256_of(weights),
        )
        models.append(LoadedModel(checkpoint=ckpt, info=info))
    return models


def _native_subgrid(native: Grid, region: Grid) -> tuple[tuple[slice, slice, slice], Grid] | None:
    """The box of ``native``'s voxels covering ``region``'s extent, as slices and as a grid (None: no overlap)."""
    corners = native.lps_to_index(region.corners_lps())
    lo = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 2, np.asarray(native.shape))
    if np.any(hi <= lo):
        return None
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])), native.sub_grid(lo, hi)


def foreground_to_native(foreground: F32, grid: Grid, native: Grid, threshold: float = 0.5) -> U8:
    """Binary mask on ``native`` from a foreground probability on ``grid`` (linear interpolation, then threshold).

    Only the native voxels inside ``grid``'s extent are interpolated; the rest are 0.
    """
    out = np.zeros(native.shape, dtype=np.uint8)
    box = _native_subgrid(native, grid)
    if box is None:
        return out
    slices, sub = box
    prob = resample_onto(foreground.astype(np.float32, copy=False), grid, sub, order=1, fill_value=0.0)
    out[slices] = (np.asarray(prob) >= threshold).astype(np.uint8)
    return out


def predict_native(
    models: Sequence[LoadedModel],
    crop_dir: Path,
    native_grid: Grid,
    *,
    device: str = "cpu",
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
) -> NativePrediction:
    """Run every model on the heart crop in ``crop_dir`` and map its outputs to ``native_grid``.

    Parameters
    ----------
    models
        From :func:`load_models`; their heads are disjoint.
    crop_dir
        A case folder as the crop-heart step writes it (``image.nii.gz`` heart ROI and ``heart.nii.gz``).
    native_grid
        Grid of the CT the user gave (the converted series), where the mask is written.
    device
        ``cpu``, ``cuda`` or ``auto`` (CUDA when available).
    min_confidence
        A decoded point below this confidence is reported as missing, not placed.
    """
    import torch

    from cardiofm.training.inference import predict_dataset_case

    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
    )
    points: dict[str, tuple[float, float, float]] = {}
    confidence: dict[str, float] = {}
    expected: list[str] = []
    mask: U8 | None = None
    seconds = {"inference": 0.0, "to_native": 0.0}
    for loaded in models:
        ckpt = loaded.checkpoint
        t0 = time.perf_counter()
        pred = predict_dataset_case(ckpt, ckpt.build(dev), crop_dir, device=dev)
        seconds["inference"] += time.perf_counter() - t0
        for head in ckpt.model_config.heads:
            names = TASK_LANDMARKS.get(head, ())
            expected += names
            for name in names:
                found = pred.landmarks.get(name)
                if found is not None and found.confidence >= min_confidence:
                    points[name] = tuple(float(v) for v in found.lps_mm)  # type: ignore[assignment]
                    confidence[name] = round(float(found.confidence), 4)
        if "calcification" in pred.probabilities:
            t1 = time.perf_counter()
            fg = 1.0 - pred.probabilities["calcification"][0]
            mask = foreground_to_native(fg, pred.grid, native_grid)
            seconds["to_native"] += time.perf_counter() - t1
    info = models[0].info if len(models) == 1 else _combined_info(models)
    landmarks = PredictedLandmarks(
        points=points,
        confidence=confidence,
        missing=[n for n in expected if n not in points],
        model=info,
    )
    logger.info("placed %d of %d landmarks", len(points), len(expected))
    return NativePrediction(landmarks=landmarks, native_grid=native_grid, calcification=mask, seconds=seconds)


def _combined_info(models: Sequence[LoadedModel]) -> ModelInfo:
    digest = hashlib.sha256("".join(m.info.sha256 for m in models).encode()).hexdigest()
    return ModelInfo(name="+".join(m.info.name for m in models), version=models[0].info.version, sha256=digest)
