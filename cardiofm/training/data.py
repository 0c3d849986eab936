"""Training data: site-dataset cases preprocessed once, then random (foreground-oversampled) patches.

A case is loaded, resampled to the training spacing when the dataset's differs, clipped and
standardised with the one :class:`PreprocessingConfig`, and its labels are turned into per-task
targets (landmark spheres or Gaussians, calcification mask) — once, then kept in memory. Patches
are drawn per step with a seeded generator: centred on a labelled structure with probability
``foreground_fraction``, else uniformly; padded with the normalised air value where the crop is
smaller than the patch; then augmented with MONAI (affine, intensity, noise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from cardiofm.constants import TASK_LANDMARKS
from cardiofm.contracts.dataset import DatasetManifest, ManifestCase
from cardiofm.contracts.preprocessing import PreprocessingConfig
from cardiofm.errors import InputDataError
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.nifti import load_nifti
from cardiofm.imaging.resample import resample_onto, target_grid
from cardiofm.labels.encoding import LandmarkEncoding, encode_landmarks
from cardiofm.labels.formats import read_landmarks_json
from cardiofm.training.config import EncodingConfig, TrainConfig

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]


def normalise_hu(hu: npt.NDArray[np.floating], pre: PreprocessingConfig) -> F32:
    """Clip to the configured HU window and standardise: ``(clip(hu) - mean) / std``."""
    out = np.clip(np.asarray(hu, dtype=np.float32), pre.hu_clip_low, pre.hu_clip_high)
    out -= np.float32(pre.mean_hu)
    out /= np.float32(pre.std_hu)
    return out


def air_value(pre: PreprocessingConfig) -> float:
    """Normalised value of air, used to pad patches beyond the crop."""
    return (pre.hu_clip_low - pre.mean_hu) / pre.std_hu


def landmark_encoding(enc: EncodingConfig) -> LandmarkEncoding:
    """The encoding object of a training config."""
    return LandmarkEncoding(kind=enc.kind, radius_mm=enc.radius_mm)


@dataclass
class Sample:
    """One preprocessed case, arrays indexed ``[i, j, k]`` on ``grid``."""

    case_id: str
    image: F32
    grid: Grid
    #: task → integer target map (uint8) — present only for tasks this case holds labels for.
    targets: dict[str, U8] = field(default_factory=dict)
    #: task → soft teacher probabilities (C, i, j, k) float32, for distillation.
    soft: dict[str, F32] = field(default_factory=dict)
    #: Voxel indices ``(n, 3)`` of labelled structures, for foreground oversampling.
    foreground: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))


def load_manifest(dataset_dir: Path) -> DatasetManifest:
    """Read a site dataset's manifest (clear error when absent)."""
    path = dataset_dir / "manifest.json"
    if not path.is_file():
        raise InputDataError(f"no manifest.json in dataset folder {dataset_dir.name}; run `cardiofm prepare` first")
    return DatasetManifest.model_validate_json(path.read_text())


def load_image(case_dir: Path, pre: PreprocessingConfig) -> tuple[F32, Grid]:
    """The case's HU image resampled (if needed) to the training spacing, not yet normalised."""
    data, grid = load_nifti(case_dir / "image.nii.gz", float32=True)
    hu = np.asarray(data, dtype=np.float32)
    if all(abs(s - pre.spacing_mm) < 1e-3 for s in grid.spacing_mm):
        return hu, grid
    target = target_grid(grid, pre.spacing_mm)
    out = resample_onto(hu, grid, target, order=1, fill_value=pre.hu_clip_low)
    return np.asarray(out, dtype=np.float32), target


def build_targets(
    case_dir: Path, case: ManifestCase, grid: Grid, tasks: tuple[str, ...], enc: EncodingConfig
) -> dict[str, U8]:
    """Integer target maps on ``grid`` for each of ``tasks`` the case holds labels for."""
    targets: dict[str, U8] = {}
    points = {}
    if (case_dir / "labels" / "landmarks.json").is_file():
        points = read_landmarks_json(case_dir / "labels" / "landmarks.json")
    for task in tasks:
        if task not in case.tasks:
            continue
        if task in TASK_LANDMARKS:
            names = TASK_LANDMARKS[task]
            targets[task] = np.asarray(encode_landmarks(points, names, grid, landmark_encoding(enc)), dtype=np.uint8)
        elif task == "calcification":
            mask, mgrid = load_nifti(case_dir / "labels" / "calcification.nii.gz")
            on = resample_onto((np.asarray(mask) > 0).astype(np.uint8), mgrid, grid, order=0, fill_value=0)
            targets[task] = np.asarray(on, dtype=np.uint8)
    return targets


def foreground_voxels(targets: dict[str, U8]) -> npt.NDArray[np.int64]:
    """Indices of labelled voxels of every target (subsampled to at most 2000)."""
    parts = [np.argwhere(t > 0) for t in targets.values()]
    fg = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
    if len(fg) > 2000:
        fg = fg[np.linspace(0, len(fg) - 1, 2000).astype(np.int64)]
    return fg.astype(np.int64)


def load_sample(dataset_dir: Path, case: ManifestCase, cfg: TrainConfig) -> Sample:
    """Load and preprocess one case of a site dataset for the tasks of ``cfg``."""
    case_dir = dataset_dir / "cases" / case.case_id
    hu, grid = load_image(case_dir, cfg.preprocessing)
    targets = build_targets(case_dir, case, grid, cfg.tasks, cfg.encoding)
    return Sample(case.case_id, normalise_hu(hu, cfg.preprocessing), grid, targets, {}, foreground_voxels(targets))


def _crop_or_pad(
    array: npt.NDArray[np.generic], start: npt.NDArray[np.int64], size: tuple[int, int, int], fill: float
) -> npt.NDArray[np.generic]:
    """A ``size`` window of ``array`` (last three axes) starting at ``start``; outside is ``fill``."""
    spatial = np.asarray(array.shape[-3:])
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(size), spatial)
    out = np.full((*array.shape[:-3], *size), fill, dtype=array.dtype)
    dst_lo = lo - start
    dst_hi = dst_lo + (hi - lo)
    if np.all(hi > lo):
        src = (..., slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        dst = (..., slice(dst_lo[0], dst_hi[0]), slice(dst_lo[1], dst_hi[1]), slice(dst_lo[2], dst_hi[2]))
        out[dst] = array[src]
    return out


class PatchDataset(Dataset[dict[str, torch.Tensor]]):
    """``steps × batch_size`` seeded random patches drawn from in-memory samples."""

    def __init__(self, samples: list[Sample], cfg: TrainConfig, tasks: tuple[str, ...]) -> None:
        if not samples:
            raise InputDataError("no training cases: the dataset's train split is empty for these tasks")
        self.samples = samples
        self.cfg = cfg
        self.tasks = tasks
        self.fill = air_value(cfg.preprocessing)
        self._augment = _augmenter(tasks) if cfg.augment else None

    def __len__(self) -> int:
        return self.cfg.steps * self.cfg.batch_size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, index])
        sample = self.samples[int(rng.integers(len(self.samples)))]
        size = self.cfg.patch_size
        shape = np.asarray(sample.image.shape)
        if len(sample.foreground) and rng.random() < self.cfg.foreground_fraction:
            centre = sample.foreground[int(rng.integers(len(sample.foreground)))]
            centre = centre + rng.integers(-size[0] // 4, size[0] // 4 + 1, size=3)
        else:
            centre = np.array([rng.integers(0, max(n, 1)) for n in shape])
        start = centre - np.asarray(size) // 2
        item: dict[str, npt.NDArray[np.generic]] = {"image": _crop_or_pad(sample.image[None], start, size, self.fill)}
        for task in self.tasks:
            if task in sample.targets:
                item[f"target_{task}"] = _crop_or_pad(sample.targets[task][None], start, size, 0)
            else:
                item[f"target_{task}"] = np.zeros((1, *size), dtype=np.uint8)
            if task in sample.soft:
                item[f"soft_{task}"] = _crop_or_pad(sample.soft[task], start, size, 0.0)
        if self._augment is not None:
            self._augment.set_random_state(seed=int(rng.integers(2**31 - 1)))
            item = self._augment(item)
        out: dict[str, torch.Tensor] = {"image": torch.as_tensor(np.asarray(item["image"]), dtype=torch.float32)}
        for task in self.tasks:
            out[f"target_{task}"] = torch.as_tensor(np.asarray(item[f"target_{task}"]), dtype=torch.int64)
            out[f"has_{task}"] = torch.tensor(task in sample.targets)
            if f"soft_{task}" in item:
                out[f"soft_{task}"] = torch.as_tensor(np.asarray(item[f"soft_{task}"]), dtype=torch.float32)
        return out


def _augmenter(tasks: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """MONAI dictionary transforms: small affine, intensity scale/shift and noise (labels nearest)."""
    from monai.transforms import Compose, RandAffined, RandGaussianNoised, RandScaleIntensityd, RandShiftIntensityd

    label_keys = [f"target_{t}" for t in tasks]
    soft_keys = [f"soft_{t}" for t in tasks]
    keys = ["image", *label_keys, *soft_keys]
    modes = ["bilinear"] + ["nearest"] * len(label_keys) + ["bilinear"] * len(soft_keys)
    return Compose(
        [
            RandAffined(
                keys=keys,
                prob=0.5,
                rotate_range=(0.17, 0.17, 0.17),
                scale_range=(0.1, 0.1, 0.1),
                mode=modes,
                padding_mode="border",
                allow_missing_keys=True,
            ),
            RandScaleIntensityd(keys=["image"], factors=0.1, prob=0.5),
            RandShiftIntensityd(keys=["image"], offsets=0.1, prob=0.5),
            RandGaussianNoised(keys=["image"], prob=0.3, std=0.05),
        ]
    )
