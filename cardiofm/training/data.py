"""Training data: site-dataset cases preprocessed once, then random (foreground-oversampled) patches.

A case is loaded, resampled to the training spacing when the dataset's differs, clipped and
standardised with the one :class:`PreprocessingConfig`, and its labels are turned into per-task
targets (landmark spheres, calcification / coronary masks) — once, then kept in memory.
For a heart-conditioned model the case's heart label map (``heart.nii.gz``, written by the crop-heart
step) is brought onto the same grid, nearest neighbour. Patches are drawn per step with a seeded
generator: centred on a labelled structure with probability ``foreground_fraction``, else uniformly;
moved to lie inside the volume on every axis the volume covers (sliding-window inference never pads such a
volume, so neither does training); padded with the normalised air value (heart: background 0) only where
the crop is smaller than the patch;
then augmented with MONAI (affine, intensity, noise; one spatial transform for image, heart and
targets, nearest for label maps). The patch's ``image`` is the network input: the CT channel plus the
heart conditioning channels (:func:`cardiofm.models.registry.conditioned_input`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from cardiofm.constants import IGNORE_LABEL, MASK_TASKS, TASK_LANDMARKS
from cardiofm.contracts.dataset import DatasetManifest, ManifestCase
from cardiofm.contracts.preprocessing import PreprocessingConfig
from cardiofm.errors import InputDataError
from cardiofm.imaging.geometry import Grid, canonical_grid
from cardiofm.imaging.nifti import load_nifti
from cardiofm.imaging.resample import resample_onto, target_grid
from cardiofm.labels.encoding import LandmarkEncoding, encode_landmarks
from cardiofm.labels.formats import read_landmarks_json
from cardiofm.models.config import HEART_CLASSES, HeartConditioning
from cardiofm.training.config import EncodingConfig, TrainConfig

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


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
    #: Heart label map (uint8, 0..7) on ``grid``; loaded only for heart-conditioned models.
    heart: U8 | None = None


def load_manifest(dataset_dir: Path) -> DatasetManifest:
    """Read a site dataset's manifest (clear error when absent)."""
    path = dataset_dir / "manifest.json"
    if not path.is_file():
        raise InputDataError(f"no manifest.json in dataset folder {dataset_dir.name}; run `cardiofm prepare` first")
    return DatasetManifest.model_validate_json(path.read_text())


def load_image(case_dir: Path, pre: PreprocessingConfig) -> tuple[F32, Grid]:
    """The case's HU image on its training grid, not yet normalised.

    The training grid has the training spacing and the canonical axis order (:func:`canonical_grid`: i, j, k
    along +L, +P, +S), so every model sees every scan the same way round; labels, heart maps and pseudo-labels
    are all placed on this grid.
    """
    data, grid = load_nifti(case_dir / "image.nii.gz", float32=True)
    return on_training_grid(np.asarray(data, dtype=np.float32), grid, pre)


def on_training_grid(hu: F32, grid: Grid, pre: PreprocessingConfig) -> tuple[F32, Grid]:
    """``hu`` (on ``grid``) on its training grid: canonical axis order, the training spacing (linear interpolation)."""
    canonical = canonical_grid(grid)
    if canonical == grid and all(abs(s - pre.spacing_mm) < 1e-3 for s in grid.spacing_mm):
        return hu, grid
    target = target_grid(canonical, pre.spacing_mm)
    out = resample_onto(hu, grid, target, order=1, fill_value=pre.hu_clip_low)
    return np.asarray(out, dtype=np.float32), target


def load_heart(case_dir: Path, grid: Grid, heart_conditioning: HeartConditioning) -> U8:
    """The case's heart label map (``heart.nii.gz``) on ``grid`` (the image's training grid), nearest neighbour.

    Parameters
    ----------
    case_dir
        ``cases/<case-id>/`` of a site dataset.
    grid
        Grid of the (resampled) image, see :func:`load_image`.
    heart_conditioning
        The model's mode, named in the error message.

    Raises
    ------
    InputDataError
        If the file is missing (naming the case and what to do) or holds labels outside 0..7.
    """
    path = case_dir / "heart.nii.gz"
    if not path.is_file():
        raise InputDataError(
            f"case {case_dir.name} has no heart.nii.gz, but the model is heart-conditioned "
            f"(heart_conditioning={heart_conditioning!r}); re-run `cardiofm prepare` for this site (the crop-heart "
            "step writes the heart map into the dataset) or use a model with heart_conditioning='none'"
        )
    data, hgrid = load_nifti(path)
    labels = np.asarray(data)
    if labels.size and (float(labels.min()) < 0 or float(labels.max()) > HEART_CLASSES - 1):
        raise InputDataError(
            f"heart.nii.gz of case {case_dir.name} holds labels outside 0..{HEART_CLASSES - 1}; "
            "re-run the crop-heart step"
        )
    on_grid = resample_onto(np.rint(labels).astype(np.uint8), hgrid, grid, order=0, fill_value=0)
    return np.asarray(on_grid, dtype=np.uint8)


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
        elif task in MASK_TASKS:
            mask, mgrid = load_nifti(case_dir / "labels" / f"{task}.nii.gz")
            on = resample_onto((np.asarray(mask) > 0).astype(np.uint8), mgrid, grid, order=0, fill_value=0)
            targets[task] = np.asarray(on, dtype=np.uint8)
    return targets


def foreground_voxels(targets: dict[str, U8]) -> npt.NDArray[np.int64]:
    """Indices of labelled voxels of every target, ignored ones not counted (subsampled to at most 2000)."""
    parts = [np.argwhere((t > 0) & (t != IGNORE_LABEL)) for t in targets.values()]
    fg = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
    if len(fg) > 2000:
        fg = fg[np.linspace(0, len(fg) - 1, 2000).astype(np.int64)]
    return fg.astype(np.int64)


def load_sample(
    dataset_dir: Path, case: ManifestCase, cfg: TrainConfig, heart_conditioning: HeartConditioning = "none"
) -> Sample:
    """Load and preprocess one case of a site dataset for the tasks of ``cfg``.

    ``heart_conditioning`` is the model's (``ModelConfig.heart_conditioning``): unless ``none``, the case's
    heart map is loaded too (a case without one raises :class:`InputDataError`).
    """
    case_dir = dataset_dir / "cases" / case.case_id
    hu, grid = load_image(case_dir, cfg.preprocessing)
    targets = build_targets(case_dir, case, grid, cfg.tasks, cfg.encoding)
    heart = load_heart(case_dir, grid, heart_conditioning) if heart_conditioning != "none" else None
    image = normalise_hu(hu, cfg.preprocessing)
    return Sample(case.case_id, image, grid, targets, {}, foreground_voxels(targets), heart)


def _inside(start: I64, shape: I64, size: I64) -> I64:
    """``start`` moved so that the patch lies inside the volume on every axis the volume covers.

    Sliding-window inference never pads a volume larger than its window; on an axis shorter than the
    patch, the whole volume stays inside the patch.
    """
    return np.clip(start, np.minimum(0, shape - size), np.maximum(0, shape - size))


def _crop_or_pad(
    array: npt.NDArray[np.generic], start: I64, size: tuple[int, int, int], fill: float
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
    """``steps × batch_size`` seeded random patches drawn from in-memory samples.

    Parameters
    ----------
    samples
        Preprocessed cases (with ``heart`` maps when ``heart_conditioning`` is not ``none``).
    cfg
        Patch size, steps, batch size, seed, augmentation, foreground oversampling.
    tasks
        Heads whose targets each item carries.
    heart_conditioning
        The model's mode (``ModelConfig.heart_conditioning``): each item's ``image`` is (1, X, Y, Z) for
        ``none``, (1 + 8, X, Y, Z) for ``onehot``, (2, X, Y, Z) for ``scaled``.

    Raises
    ------
    InputDataError
        With no samples, or a conditioned mode and a sample without a heart map.
    """

    def __init__(
        self,
        samples: list[Sample],
        cfg: TrainConfig,
        tasks: tuple[str, ...],
        heart_conditioning: HeartConditioning = "none",
    ) -> None:
        if not samples:
            raise InputDataError("no training cases: the dataset's train split is empty for these tasks")
        if heart_conditioning != "none":
            lacking = [s.case_id for s in samples if s.heart is None]
            if lacking:
                raise InputDataError(
                    f"heart_conditioning={heart_conditioning!r} needs a heart map for every case; "
                    f"{len(lacking)} case(s) have none, e.g. {lacking[:3]}: load them with "
                    f"load_sample(..., heart_conditioning={heart_conditioning!r})"
                )
        self.samples = samples
        self.cfg = cfg
        self.tasks = tasks
        self.heart_conditioning = heart_conditioning
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
            jitter = np.asarray(size) // 4  # per axis: a landmark stays inside a non-cubic patch
            centre = centre + rng.integers(-jitter, jitter + 1, size=3)
        else:
            centre = np.array([rng.integers(0, max(n, 1)) for n in shape])
        start = _inside(centre - np.asarray(size) // 2, shape, np.asarray(size))
        item: dict[str, npt.NDArray[np.generic]] = {"image": _crop_or_pad(sample.image[None], start, size, self.fill)}
        if self.heart_conditioning != "none" and sample.heart is not None:
            item["heart"] = _crop_or_pad(sample.heart[None], start, size, 0)
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
        out: dict[str, torch.Tensor] = {"image": self._network_input(item)}
        for task in self.tasks:
            out[f"target_{task}"] = torch.as_tensor(np.asarray(item[f"target_{task}"]), dtype=torch.int64)
            out[f"has_{task}"] = torch.tensor(task in sample.targets)
            if f"soft_{task}" in item:
                out[f"soft_{task}"] = torch.as_tensor(np.asarray(item[f"soft_{task}"]), dtype=torch.float32)
        return out

    def _network_input(self, item: dict[str, npt.NDArray[np.generic]]) -> torch.Tensor:
        """The CT patch (1, X, Y, Z) plus the heart conditioning channels of the model's mode."""
        image = torch.as_tensor(np.asarray(item["image"]), dtype=torch.float32)
        if self.heart_conditioning == "none":
            return image
        from cardiofm.models.registry import conditioned_input

        heart = torch.as_tensor(np.rint(np.asarray(item["heart"], dtype=np.float32)), dtype=torch.int64)
        return conditioned_input(image[None], heart[None], self.heart_conditioning)[0]


def _augmenter(tasks: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """MONAI dictionary transforms: small affine, intensity scale/shift and noise (labels and heart nearest).

    The affine is drawn once per item and applied to every spatial key (image, heart, targets, soft targets);
    intensity transforms touch the CT only.
    """
    from monai.transforms import Compose, RandAffined, RandGaussianNoised, RandScaleIntensityd, RandShiftIntensityd

    label_keys = [f"target_{t}" for t in tasks]
    soft_keys = [f"soft_{t}" for t in tasks]
    keys = ["image", "heart", *label_keys, *soft_keys]
    modes = ["bilinear", "nearest"] + ["nearest"] * len(label_keys) + ["bilinear"] * len(soft_keys)
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
