"""Heart conditioning through the data pipeline: dataset heart map → Sample → patches → inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_helpers import vessel_case, write_dataset

from cardiofm.contracts.preprocessing import PreprocessingConfig
from cardiofm.errors import InputDataError
from cardiofm.imaging.geometry import Grid
from cardiofm.models.config import HEART_CLASSES, HeartConditioning, ModelConfig, default_heads
from cardiofm.models.registry import build_model
from cardiofm.training.checkpoint import load_checkpoint, save_checkpoint
from cardiofm.training.config import TrainConfig
from cardiofm.training.data import (
    PatchDataset,
    Sample,
    foreground_voxels,
    load_image,
    load_manifest,
    load_sample,
    normalise_hu,
)
from cardiofm.training.inference import predict_case, predict_dataset_case

PRE = PreprocessingConfig()
CPU = torch.device("cpu")


def _landmark_sample(with_heart: bool = True) -> Sample:
    """Landmark class k (1..5) sits in a 3³ cube exactly where heart label k sits; labels 6, 7 elsewhere."""
    shape = (24, 24, 24)
    target = np.zeros(shape, dtype=np.uint8)
    for k in range(1, 6):
        target[4 * k - 2 : 4 * k + 1, 8:11, 10:13] = k
    heart = target.copy()
    heart[2:6, 16:20, 16:20] = 6  # labels without a landmark: must stay off the landmark channels
    heart[16:20, 2:6, 2:6] = 7
    rng = np.random.default_rng(1)
    image = normalise_hu(rng.normal(0, 200, size=shape), PRE)
    grid = Grid(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    targets = {"landmarks": target}
    return Sample("case-h", image, grid, targets, {}, foreground_voxels(targets), heart if with_heart else None)


def _cfg(augment: bool) -> TrainConfig:
    return TrainConfig(
        tasks=("landmarks",), steps=12, batch_size=1, patch_size=(16, 16, 16), augment=augment, foreground_fraction=1.0
    )


@pytest.mark.parametrize(("mode", "channels"), [("none", 1), ("onehot", 1 + HEART_CLASSES), ("scaled", 2)])
def test_patches_carry_the_conditioning_channels(mode: HeartConditioning, channels: int) -> None:
    ds = PatchDataset([_landmark_sample()], _cfg(augment=True), ("landmarks",), heart_conditioning=mode)
    item = ds[0]
    assert item["image"].shape == (channels, 16, 16, 16)
    assert item["image"].dtype == torch.float32


@pytest.mark.parametrize("mode", ["onehot", "scaled"])
def test_heart_channels_stay_aligned_with_targets_under_augmentation(mode: HeartConditioning) -> None:
    cfg = _cfg(augment=True)
    augmented = PatchDataset([_landmark_sample()], cfg, cfg.tasks, heart_conditioning=mode)
    plain = PatchDataset([_landmark_sample()], cfg.model_copy(update={"augment": False}), cfg.tasks, mode)
    moved = 0
    for i in range(len(augmented)):
        item = augmented[i]
        target = item["target_landmarks"][0]
        assert int((target > 0).sum()) > 0, "foreground oversampling puts a landmark in every patch"
        if mode == "onehot":
            onehot = item["image"][1:]
            assert torch.equal(onehot.sum(dim=0), torch.ones_like(target, dtype=torch.float32))  # one class per voxel
            for k in range(1, 6):  # heart label k is exactly where landmark class k is, after the same transform
                assert torch.equal(onehot[k] > 0.5, target == k), (i, k)
            heart = onehot.argmax(dim=0)
        else:
            heart = torch.round(item["image"][1] * (HEART_CLASSES - 1)).long()
            assert torch.allclose(item["image"][1] * (HEART_CLASSES - 1), heart.float(), atol=1e-5)
        landmark_voxels = target > 0
        assert torch.equal(heart[landmark_voxels], target[landmark_voxels]), i
        assert not bool(((heart >= 1) & (heart <= 5) & ~landmark_voxels).any()), i
        # same crop without augmentation: the affine moved this patch's voxels (so the check above had teeth)
        moved += int(not torch.equal(plain[i]["target_landmarks"], item["target_landmarks"]))
    assert moved > 0


def test_a_conditioned_dataset_refuses_samples_without_heart_map() -> None:
    cfg = _cfg(augment=False)
    with pytest.raises(InputDataError, match="case-h"):
        PatchDataset([_landmark_sample(with_heart=False)], cfg, cfg.tasks, heart_conditioning="onehot")
    PatchDataset([_landmark_sample(with_heart=False)], cfg, cfg.tasks)  # unconditioned: no heart needed


def test_load_sample_resamples_the_heart_map_with_the_image(tmp_path: Path) -> None:
    spec = vessel_case("case-2mm", shape=(16, 16, 16), spacing_mm=2.0)
    root = write_dataset(tmp_path / "ds", [spec])
    case = load_manifest(root).cases[0]
    cfg = TrainConfig(tasks=("coronaries",))  # training spacing 1 mm
    sample = load_sample(root, case, cfg, heart_conditioning="onehot")
    assert sample.heart is not None
    assert sample.heart.shape == sample.image.shape == sample.targets["coronaries"].shape == (32, 32, 32)
    assert set(np.unique(sample.heart).tolist()) == set(range(8))
    # nearest neighbour onto the image's grid: each 1 mm voxel holds the label of the 2 mm voxel around its centre
    ijk = np.argwhere(np.ones(sample.grid.shape, dtype=bool))
    src_float = spec.grid.lps_to_index(sample.grid.index_to_lps(ijk))
    src = np.rint(src_float).astype(int)
    inside = np.all((src_float >= 0) & (src_float <= 15), axis=1)  # beyond the outer voxel centres: background
    assert inside.mean() > 0.8
    assert not sample.heart[tuple(ijk[~inside].T)].any()
    got = sample.heart[tuple(ijk[inside].T)]
    np.testing.assert_array_equal(got, spec.heart[tuple(src[inside].T)])
    assert load_sample(root, case, cfg).heart is None  # not loaded for an unconditioned model


def test_a_missing_heart_map_is_an_error_naming_the_case(tmp_path: Path) -> None:
    spec = vessel_case("case-no-heart")
    spec.heart = None
    root = write_dataset(tmp_path / "ds", [spec])
    with pytest.raises(InputDataError, match=r"case-no-heart.*heart\.nii\.gz.*cardiofm prepare"):
        load_sample(root, load_manifest(root).cases[0], TrainConfig(tasks=("coronaries",)), heart_conditioning="scaled")


@pytest.mark.parametrize("mode", ["onehot", "scaled"])
def test_a_conditioned_checkpoint_predicts_a_dataset_case_unaided(tmp_path: Path, mode: HeartConditioning) -> None:
    root = write_dataset(tmp_path / "ds", [vessel_case("case-a", shape=(20, 20, 20))])
    model_cfg = ModelConfig.teacher("coronaries", heart_conditioning=mode, filters=(4, 8, 16, 32))
    train_cfg = TrainConfig(tasks=("coronaries",), patch_size=(16, 16, 16))
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", build_model(model_cfg), model_cfg, train_cfg, [])
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.model_config.heart_conditioning == mode  # the mode travels with the weights
    model = ckpt.build()
    case_dir = root / "cases" / "case-a"

    pred = predict_dataset_case(ckpt, model, case_dir, device=CPU)
    probs = pred.probabilities["coronaries"]
    assert probs.shape == (2, 20, 20, 20)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert pred.masks["coronaries"].shape == (20, 20, 20)

    # the heart map is really used: another map gives other probabilities
    sample = load_sample(root, load_manifest(root).cases[0], train_cfg, heart_conditioning=mode)
    hu_img, grid = load_image(case_dir, train_cfg.preprocessing)
    same = predict_case(ckpt, model, hu_img, grid, device=CPU, heart=sample.heart)
    np.testing.assert_allclose(same.probabilities["coronaries"], probs, atol=1e-6)
    other = predict_case(ckpt, model, hu_img, grid, device=CPU, heart=np.zeros_like(sample.heart))
    assert not np.allclose(other.probabilities["coronaries"], probs, atol=1e-4)
    assert sample.heart is not None

    with pytest.raises(InputDataError, match="heart-conditioned"):
        predict_case(ckpt, model, hu_img, grid, device=CPU)
    (case_dir / "heart.nii.gz").unlink()
    with pytest.raises(InputDataError, match="case-a"):
        predict_dataset_case(ckpt, model, case_dir, device=CPU)


def test_a_conditioned_checkpoint_is_evaluated_with_its_heart_maps(tmp_path: Path) -> None:
    from cardiofm.evaluation.evaluate import evaluate_dataset

    root = write_dataset(tmp_path / "ds", [vessel_case("case-a", shape=(20, 20, 20))])
    model_cfg = ModelConfig.teacher("coronaries", heart_conditioning="onehot", filters=(4, 8, 16, 32))
    train_cfg = TrainConfig(tasks=("coronaries",), patch_size=(16, 16, 16))
    save_checkpoint(tmp_path / "m.pt", build_model(model_cfg), model_cfg, train_cfg, [])
    report = evaluate_dataset(tmp_path / "m.pt", root, split="all")
    coronaries = report["coronaries"]
    assert isinstance(coronaries, dict)
    assert coronaries["n"] == 1
    assert 0.0 <= coronaries["dice_mean"] <= 1.0


def test_default_heads_of_a_teacher_are_unchanged_by_downstream_tasks() -> None:
    assert default_heads("coronaries") == {"coronaries": 2}
