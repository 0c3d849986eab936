from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from cardiofm.constants import IGNORE_LABEL
from cardiofm.errors import ConfigError, LabelError
from cardiofm.training.losses import (
    MaskedMultiHeadLoss,
    deep_supervision_weights,
    dice_ce,
    distillation_loss,
    downsample_labels,
)

HEADS = {"landmarks": 6, "septum": 3, "calcification": 2}


class ToyMultiHead(nn.Module):
    """Tiny model with the cardiofm naming contract (backbone., heads.<task>.), float64 for exact checks."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Conv3d(1, 4, 3, padding=1).double()
        self.heads = nn.ModuleDict({t: nn.Conv3d(4, c, 1).double() for t, c in HEADS.items()})

    def forward(self, x: Tensor) -> dict[str, list[Tensor]]:
        f = torch.relu(self.backbone(x))
        return {t: [h(f)] for t, h in self.heads.items()}


def _batch() -> tuple[Tensor, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, 8, generator=g, dtype=torch.float64)
    targets = {
        "landmarks": torch.randint(0, 6, (2, 1, 8, 8, 8), generator=g),
        "septum": torch.randint(0, 3, (2, 1, 8, 8, 8), generator=g),
        "calcification": torch.randint(0, 2, (2, 1, 8, 8, 8), generator=g),
    }
    return x, targets


def _head_grads(model: nn.Module, task: str) -> dict[str, Tensor | None]:
    return {n: p.grad for n, p in model.named_parameters() if n.startswith(f"heads.{task}.")}


def test_deep_supervision_weights_are_normalised() -> None:
    for n in (1, 2, 3, 5):
        w = deep_supervision_weights(n)
        assert math.isclose(sum(w), 1.0)
        assert all(math.isclose(a / b, 2.0) for a, b in itertools.pairwise(w))
    with pytest.raises(ConfigError):
        deep_supervision_weights(0)


def test_head_without_labels_gets_no_gradient_and_batch_independence() -> None:
    x, targets = _batch()
    # item 0 has landmarks only, item 1 septum only; nobody has calcification
    has = {
        "landmarks": torch.tensor([True, False]),
        "septum": torch.tensor([False, True]),
        "calcification": torch.tensor([False, False]),
    }
    targets["landmarks"][1] = 99  # garbage in an unlabelled item must never be read
    loss_fn = MaskedMultiHeadLoss()
    model = ToyMultiHead()
    total, per_task = loss_fn(model(x), targets, has)
    total.backward()
    assert set(per_task) == {"landmarks", "septum"}
    assert torch.isfinite(total)
    for grad in _head_grads(model, "calcification").values():
        assert grad is None or bool((grad == 0).all())
    batch_grads = {n: g.clone() for n, g in _head_grads(model, "landmarks").items() if g is not None}

    # the same landmarks head trained on item 0 alone
    alone = ToyMultiHead()
    total0, per0 = loss_fn(alone(x[:1]), {"landmarks": targets["landmarks"][:1]}, {"landmarks": torch.tensor([True])})
    total0.backward()
    alone_grads = {n: g for n, g in _head_grads(alone, "landmarks").items() if g is not None}
    assert batch_grads.keys() == alone_grads.keys()
    assert len(batch_grads) == 2
    for name, grad in batch_grads.items():
        torch.testing.assert_close(grad, alone_grads[name], rtol=1e-10, atol=1e-12)
    assert math.isclose(per_task["landmarks"], per0["landmarks"], rel_tol=1e-10)


def test_unlabelled_item_gets_exactly_zero_gradient() -> None:
    x, targets = _batch()
    outputs = ToyMultiHead()(x)
    logits = outputs["landmarks"][0]
    logits.retain_grad()
    total, _ = MaskedMultiHeadLoss(tasks=["landmarks"])(outputs, targets, {"landmarks": torch.tensor([True, False])})
    total.backward()
    assert logits.grad is not None
    assert bool((logits.grad[1] == 0).all())
    assert bool((logits.grad[0] != 0).any())


def test_no_label_at_all_is_zero_and_differentiable() -> None:
    x, targets = _batch()
    model = ToyMultiHead()
    none = {t: torch.tensor([False, False]) for t in HEADS}
    total, per_task = MaskedMultiHeadLoss()(model(x), targets, none)
    assert per_task == {}
    assert float(total.detach()) == 0.0
    total.backward()  # no error, no NaN
    assert all(p.grad is None or bool((p.grad == 0).all()) for p in model.parameters())


def test_all_background_target_is_finite() -> None:
    logits = torch.randn(2, 6, 16, 16, 16, requires_grad=True)
    target = torch.zeros(2, 1, 16, 16, 16, dtype=torch.int64)
    total, per_task = MaskedMultiHeadLoss()(
        {"landmarks": [logits]}, {"landmarks": target}, {"landmarks": torch.tensor([True, True])}
    )
    total.backward()
    assert math.isfinite(per_task["landmarks"])
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())
    # a perfect all-background prediction has near-zero loss
    perfect = torch.full((1, 2, 8, 8, 8), -20.0)
    perfect[:, 0] = 20.0
    assert float(dice_ce(perfect, torch.zeros(1, 1, 8, 8, 8, dtype=torch.int64))) < 1e-6


def test_deep_supervision_loss_is_the_normalised_weighted_sum() -> None:
    g = torch.Generator().manual_seed(3)
    outs = [torch.randn(1, 3, s, s, s, generator=g) for s in (16, 8, 4)]
    target = torch.randint(0, 3, (1, 1, 16, 16, 16), generator=g)
    total, _ = MaskedMultiHeadLoss()({"septum": outs}, {"septum": target}, {"septum": torch.tensor([True])})
    w = deep_supervision_weights(3)
    expected = sum(wi * dice_ce(o, downsample_labels(target, o.shape[2:])) for wi, o in zip(w, outs, strict=True))
    torch.testing.assert_close(total, torch.as_tensor(expected))


def test_foreground_downsampling_keeps_small_landmarks() -> None:
    target = torch.zeros(1, 1, 16, 16, 16, dtype=torch.int64)
    target[0, 0, 5, 5, 5] = 3  # one voxel, off the nearest-sampling lattice
    assert int(downsample_labels(target, (4, 4, 4), "nearest").max()) == 0
    pooled = downsample_labels(target, (4, 4, 4), "foreground")
    assert pooled.shape == (1, 1, 4, 4, 4)
    assert int(pooled[0, 0, 1, 1, 1]) == 3
    assert int((pooled > 0).sum()) == 1


def test_ignored_voxels_take_no_part_in_the_hard_loss() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 6, 8, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 6, (2, 1, 8, 8, 8), generator=g)
    target[:, :, :3] = IGNORE_LABEL  # an unsure teacher region
    loss = dice_ce(logits, target)
    loss.backward()
    assert logits.grad is not None
    assert bool((logits.grad[:, :, :3] == 0).all())  # nothing is taught there, neither landmark nor background
    assert bool((logits.grad[:, :, 3:] != 0).any())
    changed = logits.detach().clone()
    changed[:, :, :3] = torch.randn(2, 6, 3, 8, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(dice_ce(changed, target), loss.detach())  # whatever is predicted there

    everything = torch.full_like(target, IGNORE_LABEL)
    nothing_known = dice_ce(logits, everything)
    assert float(nothing_known.detach()) == 0.0
    total, _ = MaskedMultiHeadLoss()(  # the label check lets the ignore value through, and only it
        {"landmarks": [logits]}, {"landmarks": target}, {"landmarks": torch.tensor([True, True])}
    )
    assert math.isfinite(float(total.detach()))


def test_foreground_downsampling_keeps_ignored_windows_ignored() -> None:
    target = torch.zeros(1, 1, 8, 8, 8, dtype=torch.int64)
    target[0, 0, :4, :4, :4] = IGNORE_LABEL  # a whole window unsure
    target[0, 0, 4:, :4, :4] = IGNORE_LABEL  # unsure, but a landmark voxel in the same window
    target[0, 0, 5, 1, 1] = 2
    pooled = downsample_labels(target, (2, 2, 2), "foreground")
    assert int(pooled[0, 0, 0, 0, 0]) == IGNORE_LABEL
    assert int(pooled[0, 0, 1, 0, 0]) == 2
    assert int((pooled == 0).sum()) == 6  # the other windows: background


def test_out_of_range_label_is_a_label_error() -> None:
    logits = torch.randn(1, 2, 8, 8, 8)
    target = torch.full((1, 1, 8, 8, 8), 2, dtype=torch.int64)
    with pytest.raises(LabelError, match="calcification"):
        MaskedMultiHeadLoss()(
            {"calcification": [logits]}, {"calcification": target}, {"calcification": torch.tensor([True])}
        )


def test_missing_output_for_requested_task_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="septum"):
        MaskedMultiHeadLoss(tasks=["septum"])({"landmarks": [torch.zeros(1, 6, 4, 4, 4)]}, {}, {})


def test_distillation_loss_zero_for_matching_student_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(4)
    teacher = torch.softmax(torch.randn(2, 3, 8, 8, 8, generator=g), dim=1)
    student = torch.log(teacher).clone().requires_grad_(True)
    mask = torch.ones(2, 8, 8, 8, dtype=torch.bool)
    for temperature in (1.0, 2.0):
        assert abs(float(distillation_loss(student, teacher, temperature, mask).detach())) < 1e-6
    other = torch.randn(2, 3, 8, 8, 8, generator=g, requires_grad=True)
    kd = distillation_loss(other, teacher, 2.0, mask[:, None])  # (B, 1, ...) mask accepted too
    assert float(kd.detach()) > 0
    (grad,) = torch.autograd.grad(kd, other)
    assert bool((grad != 0).any())
    # voxels outside the mask contribute nothing
    half = mask.clone()
    half[1] = False
    (grad_half,) = torch.autograd.grad(distillation_loss(other, teacher, 2.0, half), other)
    assert bool((grad_half[1] == 0).all())
    assert bool((grad_half[0] != 0).any())
    # no confident voxel: zero, no NaN
    empty = distillation_loss(other, teacher, 2.0, torch.zeros_like(mask))
    assert float(empty.detach()) == 0.0
    with pytest.raises(ConfigError):
        distillation_loss(other, teacher, 0.0, mask)


def _one_landmark_teacher(size: int) -> tuple[Tensor, Tensor]:
    """Teacher sure of background everywhere but one voxel of class 1; student right on background only."""
    teacher = torch.full((1, 3, size, size, size), 0.01)
    teacher[:, 0] = 0.98
    teacher[0, :, 0, 0, 0] = torch.tensor([0.02, 0.97, 0.01])
    student = torch.log(teacher).clone()
    student[0, :, 0, 0, 0] = torch.log(torch.tensor([0.98, 0.01, 0.01]))  # misses the landmark
    return teacher, student


def test_class_balanced_distillation_does_not_let_background_drown_a_small_structure() -> None:
    small_teacher, small_student = _one_landmark_teacher(4)
    large_teacher, large_student = _one_landmark_teacher(16)
    balanced_small = float(distillation_loss(small_student, small_teacher, 2.0))
    balanced_large = float(distillation_loss(large_student, large_teacher, 2.0))
    # each present class weighs the same: 64× more background voxels leave the loss unchanged
    assert balanced_small == pytest.approx(balanced_large, rel=1e-5)
    assert balanced_large > 0.1
    # a plain voxel mean shrinks with the amount of background (the defect the default avoids)
    voxel_large = float(distillation_loss(large_student, large_teacher, 2.0, balance="voxel"))
    assert voxel_large < balanced_large / 1000
    assert voxel_large == pytest.approx(balanced_large * 2 / 16**3, rel=1e-4)


def test_class_balanced_distillation_ignores_unselected_voxels_of_a_class() -> None:
    teacher, student = _one_landmark_teacher(4)
    student = student.clone().requires_grad_(True)
    mask = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    mask[0, 0, 0, 0] = False  # drop the only landmark voxel: only background left, which the student matches
    kd = distillation_loss(student, teacher, 2.0, mask)
    assert abs(float(kd.detach())) < 1e-6
    (grad,) = torch.autograd.grad(distillation_loss(student, teacher, 2.0), student)
    assert bool((grad[0, :, 0, 0, 0] != 0).any())
    with pytest.raises(ConfigError, match="balance"):
        distillation_loss(student, teacher, 2.0, balance="pixel")  # type: ignore[arg-type]
