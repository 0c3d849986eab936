from __future__ import annotations

import pytest
import torch
from monai.networks.nets.dynunet import DynUNet
from torch import nn

from cardiofm.errors import ConfigError, InputDataError
from cardiofm.models.config import STUDENT_HEADS, ModelConfig, default_heads, load_model_config
from cardiofm.models.registry import (
    MultiHeadSwinUNETR,
    ResUNetTeacher,
    _DynUNetBackbone,
    build_model,
    conditioned_input,
    freeze_backbone,
    only_last_layer,
    parameter_groups,
)
from cardiofm.training.losses import MaskedMultiHeadLoss

TINY_FILTERS = (8, 16, 32, 64, 64)


@pytest.fixture(scope="module")
def teacher() -> ResUNetTeacher:
    torch.manual_seed(0)
    model = build_model(ModelConfig.teacher("landmarks", filters=TINY_FILTERS))
    assert isinstance(model, ResUNetTeacher)
    return model


@pytest.fixture(scope="module")
def student() -> MultiHeadSwinUNETR:
    torch.manual_seed(0)
    model = build_model(ModelConfig.student(feature_size=12))
    assert isinstance(model, MultiHeadSwinUNETR)
    return model


def _shapes(out: dict[str, list[torch.Tensor]]) -> dict[str, list[tuple[int, ...]]]:
    return {k: [tuple(t.shape) for t in v] for k, v in out.items()}


def test_teacher_outputs_train_and_eval(teacher: ResUNetTeacher) -> None:
    x = torch.randn(2, 1, 32, 32, 32)
    teacher.train()
    assert _shapes(teacher(x)) == {"landmarks": [(2, 6, 32, 32, 32), (2, 6, 16, 16, 16), (2, 6, 8, 8, 8)]}
    teacher.eval()
    with torch.no_grad():
        assert _shapes(teacher(x)) == {"landmarks": [(2, 6, 32, 32, 32)]}


def test_teacher_without_deep_supervision_has_one_output() -> None:
    model = build_model(ModelConfig.teacher("calcification", filters=TINY_FILTERS, deep_supervision=False)).train()
    assert _shapes(model(torch.randn(1, 1, 32, 32, 32))) == {"calcification": [(1, 2, 32, 32, 32)]}


def test_teacher_backbone_is_wired_like_dynunet() -> None:
    torch.manual_seed(0)
    net = DynUNet(3, 1, 6, [3] * 5, [1, 2, 2, 2, 2], [2] * 4, filters=list(TINY_FILTERS), res_block=True).eval()
    backbone = _DynUNetBackbone(net).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.output_block(backbone(x)[0]), net(x))


def test_student_outputs_and_partial_label_gradients(student: MultiHeadSwinUNETR) -> None:
    x = torch.randn(2, 1, 64, 64, 64)
    student.eval()
    with torch.no_grad():
        assert _shapes(student(x[:1])) == {t: [(1, c, 64, 64, 64)] for t, c in STUDENT_HEADS.items()}
    student.train()
    student.zero_grad(set_to_none=True)
    out = student(x)
    assert _shapes(out) == {t: [(2, c, 64, 64, 64)] for t, c in STUDENT_HEADS.items()}
    targets = {t: torch.zeros(2, 1, 64, 64, 64, dtype=torch.int64) for t in STUDENT_HEADS}
    targets["landmarks"][0, 0, 30:34, 30:34, 30:34] = 2
    has = {
        "landmarks": torch.tensor([True, False]),
        "septum": torch.tensor([False, True]),
        "calcification": torch.tensor([False, False]),
    }
    total, per_task = MaskedMultiHeadLoss()(out, targets, has)
    total.backward()
    assert set(per_task) == {"landmarks", "septum"}
    for name, p in student.named_parameters():
        if name.startswith("heads.calcification."):
            assert p.grad is None or bool((p.grad == 0).all())
        if name.startswith(("heads.landmarks.", "heads.septum.")):
            assert p.grad is not None
            assert bool((p.grad != 0).any())
    student.zero_grad(set_to_none=True)


@pytest.mark.parametrize("shape", [(1, 1, 48, 64, 64), (1, 2, 64, 64, 64), (1, 64, 64, 64)])
def test_student_rejects_bad_inputs(student: MultiHeadSwinUNETR, shape: tuple[int, ...]) -> None:
    with pytest.raises(InputDataError):
        student(torch.zeros(shape))


def test_teacher_rejects_indivisible_size(teacher: ResUNetTeacher) -> None:
    with pytest.raises(InputDataError, match="divisible by 16"):
        teacher(torch.zeros(1, 1, 40, 32, 32))


@pytest.mark.parametrize("fixture", ["teacher", "student"])
def test_parameter_groups_partition(fixture: str, request: pytest.FixtureRequest) -> None:
    model: nn.Module = request.getfixturevalue(fixture)
    for include_buffers in (False, True):
        groups = parameter_groups(model, include_buffers=include_buffers)
        names = list(model.state_dict()) if include_buffers else [n for n, _ in model.named_parameters()]
        flat = [n for g in groups.values() for n in g]
        assert sorted(flat) == sorted(names)
        assert len(flat) == len(set(flat))
        assert all(n.startswith("backbone.") for n in groups["backbone"])
        for task in model.config.heads:  # type: ignore[union-attr]
            assert groups[task]
            assert all(n.startswith(f"heads.{task}.") for n in groups[task])


def test_freeze_backbone_and_only_last_layer() -> None:
    model = build_model(ModelConfig.student(feature_size=12))
    trainable = freeze_backbone(model)
    assert trainable
    assert all(n.startswith("heads.") for n in trainable)
    assert trainable == [n for n, p in model.named_parameters() if p.requires_grad]
    for p in model.parameters():
        p.requires_grad_(False)
    only = only_last_layer(model, "septum")
    assert only == ["heads.septum.conv.conv.weight", "heads.septum.conv.conv.bias"]
    # called per task in turn (as the trainer does), each named head stays trainable, the backbone frozen
    both = only_last_layer(model, "landmarks")
    assert sorted(both) == sorted([*only, "heads.landmarks.conv.conv.weight", "heads.landmarks.conv.conv.bias"])
    with pytest.raises(ConfigError, match="did you mean 'septum'"):
        only_last_layer(model, "septim")


def test_heart_conditioning_channels() -> None:
    cfg = ModelConfig.student(feature_size=12, heart_conditioning="onehot")
    assert cfg.in_channels == 9
    assert ModelConfig.teacher("septum", heart_conditioning="scaled").in_channels == 2
    assert ModelConfig.teacher("septum").in_channels == 1
    model = build_model(ModelConfig.teacher("septum", filters=TINY_FILTERS, heart_conditioning="onehot"))
    image = torch.randn(1, 1, 32, 32, 32)
    heart = torch.randint(0, 8, (1, 1, 32, 32, 32))
    x = conditioned_input(image, heart, "onehot")
    assert x.shape == (1, 9, 32, 32, 32)
    torch.testing.assert_close(x[:, 1:].sum(dim=1), torch.ones(1, 32, 32, 32))
    assert bool((x[:, 1:].argmax(dim=1) == heart[:, 0]).all())
    model.eval()
    with torch.no_grad():
        assert _shapes(model(x)) == {"septum": [(1, 3, 32, 32, 32)]}
    scaled = conditioned_input(image, heart, "scaled")
    torch.testing.assert_close(scaled[:, 1:], heart.float() / 7.0)
    with pytest.raises(InputDataError):
        conditioned_input(image, heart + 1, "onehot")  # label 8 does not exist
    with pytest.raises(ConfigError):
        conditioned_input(image, None, "onehot")


def test_unknown_model_name_suggests() -> None:
    with pytest.raises(ConfigError, match="did you mean 'swinunetr-student'"):
        load_model_config({"name": "swinunetr-studnt"})
    with pytest.raises(ConfigError, match="did you mean 'resunet-teacher'"):
        build_model(ModelConfig.model_construct(name="resunet-teachr", heads=default_heads("septum")))  # type: ignore[arg-type]


def test_config_validation_and_roundtrip() -> None:
    cfg = ModelConfig.student(heart_conditioning="onehot", heads={**STUDENT_HEADS, "heart": 8})
    dumped = cfg.model_dump(mode="json")
    assert dumped["in_channels"] == 9
    assert ModelConfig.model_validate(dumped) == cfg
    assert ModelConfig.student().heads == STUDENT_HEADS
    with pytest.raises(ConfigError, match="exactly one"):
        load_model_config({"name": "resunet-teacher", "heads": {"landmarks": 6, "septum": 3}})
    with pytest.raises(ConfigError, match="needs heads"):
        load_model_config({"name": "resunet-teacher"})
    with pytest.raises(ConfigError, match="6 output channels"):
        load_model_config({"name": "swinunetr-student", "heads": {"landmarks": 5}})
    with pytest.raises(ConfigError, match="divisible by 12"):
        load_model_config({"name": "swinunetr-student", "feature_size": 18})
    with pytest.raises(ConfigError, match="extra"):
        load_model_config({"name": "swinunetr-student", "img_size": 96})
    with pytest.raises(ConfigError, match="did you mean 'landmarks'"):
        default_heads("landmark")
