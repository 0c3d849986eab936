"""A downstream head (coronary arteries) added to a trained student and fine-tuned last-layer-only."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from dataset_helpers import vessel_case, write_dataset
from typer.testing import CliRunner

from cardiofm.cli.main import app
from cardiofm.constants import DOWNSTREAM_TASKS, TASKS
from cardiofm.errors import ConfigError
from cardiofm.models.config import STUDENT_HEADS, ModelConfig
from cardiofm.models.registry import build_model
from cardiofm.training.checkpoint import load_checkpoint, save_checkpoint
from cardiofm.training.config import TrainConfig

#: A CPU-sized student (SwinUNETR needs 64³ patches to train).
STUDENT = ModelConfig.student(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
PATCH = (64, 64, 64)
#: Fine-tuning steps: a few seconds each on a CPU, even with only one 1×1×1 convolution trained.
STEPS = 4


@pytest.fixture(scope="module")
def trained_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A student checkpoint with the foundation heads (random weights stand in for training)."""
    path = tmp_path_factory.mktemp("student") / "student.pt"
    torch.manual_seed(5)
    model = build_model(STUDENT)
    save_checkpoint(path, model, STUDENT, TrainConfig(tasks=TASKS, patch_size=PATCH), [{"loss": 1.0}])
    return path


def _finetune_args(dataset: Path, init: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--dataset",
        str(dataset),
        "--model",
        "student",
        "--task",
        "coronaries",
        "--init",
        str(init),
        "--freeze",
        "last-layer",
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--batch-size",
        "1",
        "--patch",
        str(PATCH[0]),
        "--lr",
        "0.3",
        "--device",
        "cpu",
        *extra,
    ]


def test_downstream_tasks_are_heads_but_not_foundation_tasks() -> None:
    assert "coronaries" in DOWNSTREAM_TASKS
    assert "coronaries" not in TASKS
    assert "coronaries" not in STUDENT_HEADS
    assert STUDENT.with_heads(("coronaries",)).heads == {**STUDENT_HEADS, "coronaries": 2}
    assert TrainConfig(tasks=("coronaries",)).tasks == ("coronaries",)
    with pytest.raises(ConfigError, match="exactly one task head"):
        ModelConfig.teacher("landmarks").with_heads(("coronaries",))


@pytest.mark.slow
def test_last_layer_finetune_changes_only_the_new_heads_last_layer(trained_student: Path, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "ds", [vessel_case("case-c")])
    out = tmp_path / "coronaries.pt"
    result = CliRunner().invoke(app, _finetune_args(dataset, trained_student, out))
    assert result.exit_code == 0, (result.output, result.exception)

    init = load_checkpoint(trained_student)
    tuned = load_checkpoint(out)
    assert tuned.model_config == STUDENT.with_heads(("coronaries",))  # the init's model plus the new head
    assert list(tuned.model_config.heads) == [*TASKS, "coronaries"]
    assert tuned.train_config.tasks == ("coronaries",)
    assert tuned.train_config.preprocessing == init.train_config.preprocessing
    new = set(tuned.state_dict) - set(init.state_dict)
    assert new == {"heads.coronaries.conv.conv.weight", "heads.coronaries.conv.conv.bias"}  # one 1×1×1 conv
    assert set(init.state_dict) <= set(tuned.state_dict)
    for name, before in init.state_dict.items():  # backbone and the other heads: byte for byte the init's
        after = tuned.state_dict[name]
        assert after.dtype == before.dtype, name
        assert after.numpy().tobytes() == before.numpy().tobytes(), name
    torch.manual_seed(tuned.train_config.seed)  # the trainer seeds the same way before building the model
    fresh = build_model(tuned.model_config).state_dict()
    for name in new:  # the new head started fresh and was trained
        assert not torch.equal(tuned.state_dict[name], fresh[name]), name

    losses = [h["coronaries"] for h in tuned.history]
    assert len(losses) == STEPS
    assert all(b < a for a, b in itertools.pairwise(losses)), losses  # one case: the loss falls
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.slow
def test_evaluate_reports_coronary_dice(trained_student: Path, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "ds", [vessel_case("case-c")])
    out = tmp_path / "coronaries.pt"
    model_cfg = STUDENT.with_heads(("coronaries",))
    save_checkpoint(out, build_model(model_cfg), model_cfg, TrainConfig(tasks=("coronaries",), patch_size=PATCH), [])
    report_path = tmp_path / "report.json"
    args = [
        "evaluate",
        "--checkpoint",
        str(out),
        "--dataset",
        str(dataset),
        "--split",
        "all",
        "--json",
        str(report_path),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(report_path.read_text())
    assert report["coronaries"]["n"] == 1
    assert 0.0 <= report["coronaries"]["dice_mean"] <= 1.0
    assert report["calcification"]["n"] == 0  # the case holds no calcification label
    assert "coronaries Dice" in result.output


def test_finetune_options_must_fit_the_init_checkpoint(trained_student: Path, tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "ds", [vessel_case("case-c")])
    runner = CliRunner()
    args = _finetune_args(dataset, trained_student, tmp_path / "x.pt")
    teacher = runner.invoke(app, [a if a != "student" else "teacher" for a in args])
    assert isinstance(teacher.exception, ConfigError)
    assert "pass the matching --model" in str(teacher.exception)
    spacing = runner.invoke(app, [*args, "--spacing-mm", "2"])
    assert isinstance(spacing.exception, ConfigError)
    assert "leave --spacing-mm out" in str(spacing.exception)
    assert not (tmp_path / "x.pt").exists()
