from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from cardiofm.contracts.preprocessing import PreprocessingConfig
from cardiofm.imaging.geometry import Grid
from cardiofm.models.config import ModelConfig, default_heads
from cardiofm.models.registry import build_model
from cardiofm.training.config import TrainConfig
from cardiofm.training.data import PatchDataset, Sample, air_value, foreground_voxels, normalise_hu
from cardiofm.training.losses import MaskedMultiHeadLoss
from cardiofm.training.trainer import lr_lambda, train_step

PRE = PreprocessingConfig()


def _sample(shape: tuple[int, int, int] = (20, 18, 16)) -> Sample:
    rng = np.random.default_rng(0)
    target = np.zeros(shape, dtype=np.uint8)
    target[10, 9, 8] = 3
    image = normalise_hu(rng.normal(0, 200, size=shape), PRE)
    grid = Grid(shape, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    return Sample("case-x", image, grid, {"landmarks": target}, {}, foreground_voxels({"landmarks": target}))


def test_normalisation_uses_the_configured_window() -> None:
    hu = np.array([-3000.0, PRE.mean_hu, 5000.0])
    out = normalise_hu(hu, PRE)
    assert out[0] == pytest.approx((PRE.hu_clip_low - PRE.mean_hu) / PRE.std_hu)
    assert out[1] == pytest.approx(0.0, abs=1e-6)
    assert out[2] == pytest.approx((PRE.hu_clip_high - PRE.mean_hu) / PRE.std_hu)
    assert air_value(PRE) == pytest.approx(out[0])


def test_patches_are_padded_with_air_and_oversample_foreground() -> None:
    cfg = TrainConfig(
        tasks=("landmarks",), steps=40, batch_size=1, patch_size=(32, 32, 32), augment=False, foreground_fraction=1.0
    )
    ds = PatchDataset([_sample()], cfg, cfg.tasks)
    hits = 0
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (1, 32, 32, 32)
        assert item["target_landmarks"].dtype == torch.int64
        assert bool(item["has_landmarks"])
        # the volume (20x18x16) is smaller than the patch: the rest is air
        assert float(item["image"].min()) == pytest.approx(air_value(PRE), abs=1e-6)
        hits += int((item["target_landmarks"] == 3).any())
    assert hits == len(ds)  # every patch centred near the labelled voxel contains it


@pytest.mark.parametrize("foreground_fraction", [0.0, 1.0])
def test_patches_of_a_larger_volume_lie_inside_it_as_inference_windows_do(foreground_fraction: float) -> None:
    # sliding-window inference never pads a volume larger than its window, so training never shows the
    # model padding such a volume lacks: a patch near the border (or around a landmark at the border) moves in
    sample = _sample((40, 36, 34))
    sample.image[:] = air_value(PRE) + 1.0  # no air inside: any air voxel in a patch is padding
    sample.targets["landmarks"][:] = 0
    sample.targets["landmarks"][1, 34, 0] = 2  # a landmark at a corner of the volume
    sample.foreground = foreground_voxels(sample.targets)
    cfg = TrainConfig(
        tasks=("landmarks",),
        steps=60,
        batch_size=1,
        patch_size=(32, 16, 16),
        augment=False,
        foreground_fraction=foreground_fraction,
    )
    ds = PatchDataset([sample], cfg, cfg.tasks)
    landmark_seen = 0
    for i in range(len(ds)):
        item = ds[i]
        assert float(item["image"].min()) > air_value(PRE), f"patch {i} holds padding"
        landmark_seen += int((item["target_landmarks"] == 2).any())
    if foreground_fraction == 1.0:
        assert landmark_seen == len(ds)  # moved in, the patch still holds the landmark it was drawn for


def test_patches_are_deterministic_by_seed_and_index() -> None:
    cfg = TrainConfig(tasks=("landmarks",), steps=4, batch_size=1, patch_size=(16, 16, 16))
    a, b = PatchDataset([_sample()], cfg, cfg.tasks), PatchDataset([_sample()], cfg, cfg.tasks)
    for i in range(4):
        assert torch.equal(a[i]["image"], b[i]["image"])
    other = PatchDataset([_sample()], cfg.model_copy(update={"seed": 9}), cfg.tasks)
    assert any(not torch.equal(a[i]["image"], other[i]["image"]) for i in range(4))


def test_schedule_warms_up_then_decays_to_one_percent() -> None:
    cfg = TrainConfig(tasks=("landmarks",), steps=100, warmup_steps=10)
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.01)


def test_a_non_finite_loss_stops_training_instead_of_being_swallowed() -> None:
    model = build_model(ModelConfig(name="resunet-teacher", heads=default_heads("landmarks"), filters=(4, 8, 16, 32)))
    cfg = TrainConfig(tasks=("landmarks",), steps=1, patch_size=(16, 16, 16))
    batch = {
        "image": torch.full((1, 1, 16, 16, 16), float("nan")),
        "target_landmarks": torch.zeros((1, 1, 16, 16, 16), dtype=torch.int64),
        "has_landmarks": torch.tensor([True]),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        train_step(model.train(), batch, cfg.tasks, MaskedMultiHeadLoss(tasks=cfg.tasks), optimizer, nullcontext, cfg)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def _tiny_teacher() -> ModelConfig:
    return ModelConfig(name="resunet-teacher", heads=default_heads("landmarks"), filters=(4, 8, 16, 32))


def test_training_starts_from_given_weights_and_refuses_foreign_ones(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cardiofm.errors import ConfigError
    from cardiofm.training.checkpoint import load_checkpoint
    from cardiofm.training.trainer import train

    cfg = TrainConfig(tasks=("landmarks",), steps=1, batch_size=1, patch_size=(16, 16, 16), learning_rate=1e-9)
    start = {k: torch.full_like(v, 0.25) for k, v in build_model(_tiny_teacher()).state_dict().items() if "head" in k}
    train([_sample()], cfg, _tiny_teacher(), tmp_path / "a.pt", init_state=start)
    trained = load_checkpoint(tmp_path / "a.pt").state_dict
    for name, value in start.items():  # a near-zero learning rate: the heads still hold the given weights
        assert torch.allclose(trained[name].float(), value, atol=1e-5), name
    with pytest.raises(ConfigError, match="lacks"):
        train([_sample()], cfg, _tiny_teacher(), tmp_path / "b.pt", init_state={"nope.weight": torch.zeros(1)})
    name = next(iter(start))
    with pytest.raises(ConfigError, match="wrong shape"):
        train([_sample()], cfg, _tiny_teacher(), tmp_path / "c.pt", init_state={name: torch.zeros(7, 7)})


def test_fedprox_term_pulls_towards_the_starting_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cardiofm.training.checkpoint import load_checkpoint
    from cardiofm.training.trainer import train

    cfg = TrainConfig(tasks=("landmarks",), steps=6, batch_size=1, patch_size=(16, 16, 16), warmup_steps=0, seed=3)
    free = train([_sample()], cfg, _tiny_teacher(), tmp_path / "free.pt")
    held = train([_sample()], cfg, _tiny_teacher(), tmp_path / "prox.pt", proximal_mu=100.0)
    assert "proximal" in held.history[-1]
    assert "proximal" not in free.history[-1]
    assert held.history[0]["proximal"] == 0.0  # first step: still at the start
    assert held.history[-1]["proximal"] > 0.0
    torch.manual_seed(cfg.seed)  # the trainer seeds the same way: both runs started from these weights
    start = build_model(_tiny_teacher()).state_dict()

    def drift(path):  # type: ignore[no-untyped-def]
        state = load_checkpoint(path).state_dict
        return sum(float((state[k].float() - v.float()).norm()) for k, v in start.items() if "weight" in k)

    assert drift(tmp_path / "prox.pt") < drift(tmp_path / "free.pt")
