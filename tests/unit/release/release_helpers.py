"""A tiny landmark teacher checkpoint and a small CT NIfTI for the release tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.nifti import save_nifti
from cardiofm.models.config import ModelConfig
from cardiofm.models.registry import build_model
from cardiofm.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cardiofm.training.config import TrainConfig

PATCH = (16, 16, 16)


def tiny_checkpoint(path: Path, seed: int = 0) -> Checkpoint:
    """A saved and re-loaded landmark teacher with random weights (filters 4..32, 16³ patches)."""
    torch.manual_seed(seed)
    cfg = ModelConfig.teacher("landmarks", filters=(4, 8, 16, 32))
    train = TrainConfig(tasks=("landmarks",), patch_size=PATCH, steps=3)
    save_checkpoint(path, build_model(cfg), cfg, train, [{"loss": 1.5}, {"loss": 1.25}])
    return load_checkpoint(path)


def random_ct(path: Path, shape: tuple[int, int, int] = (20, 18, 14), spacing_mm: float = 1.0) -> Path:
    """A random HU volume in a non-canonical orientation (i along -L), so the runner reorients it."""
    hu = np.random.default_rng(1).uniform(-1000.0, 600.0, shape).astype(np.float32)
    flip = ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    grid = Grid(shape=shape, spacing_mm=(spacing_mm,) * 3, origin_lps_mm=(10.0, -5.0, 3.0), direction=flip)
    return save_nifti(path, hu, grid)
