"""The demo's local-only teachers train side by side, one process each, each on its own site's cases only."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardiofm.errors import MissingResourceError
from cardiofm.federated.loopback import ChainSettings, train_local_teachers
from cardiofm.training.checkpoint import load_checkpoint
from tests.unit.training.dataset_helpers import calcification_site

SETTINGS = ChainSettings(num_rounds=1, local_steps=2, spacing_mm=1.0, teacher_patch_vox=16)


def test_local_teachers_run_in_parallel_and_come_back_in_job_order(tmp_path: Path) -> None:
    jobs = [
        ("calcification", name, calcification_site(tmp_path, name, cases), tmp_path / name / "teacher.pt")
        for name, cases in (("site-a", 1), ("site-b", 2))
    ]
    paths = train_local_teachers(jobs, SETTINGS, workers=2)
    assert paths == [job[3] for job in jobs]
    for path in paths:
        ckpt = load_checkpoint(path)
        assert len(ckpt.history) == 2  # num_rounds × local_steps, what each federated site trains
        assert ckpt.train_config.tasks == ("calcification",)


def test_a_site_without_the_task_fails_with_the_clear_error(tmp_path: Path) -> None:
    site = calcification_site(tmp_path, "site-a", 1)
    with pytest.raises(MissingResourceError, match="no training case labelled"):
        train_local_teachers([("septum", "site-a", site, tmp_path / "t.pt")], SETTINGS)
