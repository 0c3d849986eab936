"""Chain profiles: the paper's settings reach every stage's run config; a GPU profile is refused on a CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cardiofm.cli.main import app
from cardiofm.errors import ConfigError
from cardiofm.federated.profiles import (
    PAPER_STUDENT_STEP_S,
    PAPER_TEACHER_STEP_S,
    estimate_gpu_hours,
    get_profile,
    with_overrides,
)
from cardiofm.federated.task import epoch_steps, stage_spec
from cardiofm.training.config import TrainConfig


def test_paper_profile_carries_the_papers_settings_into_every_stage(tmp_path: Path) -> None:
    paper = get_profile("paper")
    assert paper.needs_gpu
    teacher = stage_spec(paper.settings.run_config("teacher:landmarks", tmp_path))
    assert teacher.train.preprocessing.spacing_mm == 1.0
    assert teacher.train.patch_size == (96, 96, 96)
    assert teacher.train.learning_rate == 1e-2
    assert teacher.local_epochs == 10
    assert teacher.model.filters == (32, 64, 128, 256, 320)
    student = stage_spec(paper.settings.run_config("distill", tmp_path, tasks=("landmarks",)))
    assert student.train.learning_rate == 1e-4
    assert student.model.feature_size == 24
    assert student.train.patch_size == (96, 96, 96)
    assert paper.settings.num_rounds == 20
    # the stage settings survive the trip to the sites (a Flower ConfigRecord)
    from cardiofm.federated.task import StageSpec

    assert StageSpec.from_config(teacher.to_config()).local_epochs == 10


def test_demo_profile_carries_its_training_settings_to_teachers_and_student(tmp_path: Path) -> None:
    demo = get_profile("demo").settings
    assert not get_profile("demo").needs_gpu
    teacher = stage_spec(demo.run_config("teacher:septum", tmp_path))
    assert teacher.train.preprocessing.spacing_mm == 4.0
    assert teacher.train.patch_size == (24, 24, 24)
    assert teacher.train.encoding.radius_mm == 6.0
    assert teacher.train.foreground_fraction == 0.67
    assert (teacher.train.steps, teacher.train.learning_rate) == (500, 1e-2)
    student = stage_spec(demo.run_config("distill", tmp_path, tasks=("landmarks", "septum")))
    assert student.train.steps == 10  # the student's step costs ~36 teacher steps on a CPU
    assert student.train.encoding.radius_mm == 6.0
    # the settings survive the trip to the sites (a Flower ConfigRecord)
    from cardiofm.federated.task import StageSpec

    back = StageSpec.from_config(teacher.to_config())
    assert (back.train.encoding.radius_mm, back.train.foreground_fraction) == (6.0, 0.67)
    # --local-steps replaces the steps of every stage, the student's too
    quick = with_overrides(get_profile("demo"), local_steps=3).settings
    assert stage_spec(quick.run_config("distill", tmp_path, tasks=("landmarks",))).train.steps == 3


def test_epochs_become_steps_per_site() -> None:
    cfg = TrainConfig(tasks=("landmarks",), batch_size=2, warmup_steps=10)
    assert epoch_steps(10, 45, cfg) == {"steps": 230, "warmup_steps": 10}  # 10 × ceil(45 / 2)
    assert epoch_steps(1, 3, cfg) == {"steps": 2, "warmup_steps": 0}
    assert epoch_steps(0, 45, cfg) == {}


def test_gpu_hours_by_hand() -> None:
    paper = get_profile("paper").settings
    hours = estimate_gpu_hours(paper, {"a": 40, "b": 40}, {"a": ["landmarks", "septum"], "b": []})
    per_round = 10 * math.ceil(40 / 2)
    teacher_s = 2 * 2 * 20 * per_round * PAPER_TEACHER_STEP_S
    student_s = 2 * 20 * per_round * PAPER_STUDENT_STEP_S
    assert hours["a"] == pytest.approx((teacher_s + student_s) / 3600, abs=0.01)
    assert hours["b"] == pytest.approx(student_s / 3600, abs=0.01)  # a held-out site only distils and fine-tunes


def test_overrides_and_unknown_profile() -> None:
    demo = with_overrides(get_profile("paper"), num_rounds=2, local_steps=5)
    assert (demo.settings.num_rounds, demo.settings.local_steps, demo.settings.local_epochs) == (2, 5, 0)
    with pytest.raises(ConfigError, match="known: \\['demo', 'paper'\\]"):
        get_profile("papr")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_paper_profile_is_refused_on_a_cpu_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--profile", "paper", "--out", str(out)])
    assert result.exit_code == ConfigError.exit_code
    assert "needs a GPU" in result.output
    assert "--force" in result.output
    assert not out.exists()
    unknown = CliRunner().invoke(app, ["demo", "--profile", "nope", "--out", str(out)])
    assert unknown.exit_code == ConfigError.exit_code
    assert "unknown profile 'nope'" in unknown.output
