"""A heart-conditioned model end to end: `cardiofm train` → checkpoint → evaluate and pseudo-label, unaided."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from dataset_helpers import vessel_case, write_dataset
from typer.testing import CliRunner

from cardiofm.cli.main import app
from cardiofm.models.registry import build_model
from cardiofm.training.checkpoint import load_checkpoint


def test_a_heart_conditioned_teacher_trains_evaluates_and_pseudolabels(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "ds", [vessel_case("case-a"), vessel_case("case-b")])
    out = tmp_path / "teacher.pt"
    runner = CliRunner()
    args = ["train", "--dataset", str(dataset), "--model", "teacher", "--task", "coronaries"]
    args += ["--heart-conditioning", "onehot", "--filters", "4,8,16,32", "--patch", "32", "--steps", "3"]
    args += ["--batch-size", "2", "--device", "cpu", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    ckpt = load_checkpoint(out)
    assert ckpt.model_config.heart_conditioning == "onehot"
    assert ckpt.model_config.in_channels == 9
    assert len(ckpt.history) == 3
    # the first layer saw 9 input channels and learnt on all of them (the heart channels carry gradient)
    first = next(v for k, v in ckpt.state_dict.items() if k.endswith("weight") and v.ndim == 5 and v.shape[1] == 9)
    torch.manual_seed(ckpt.train_config.seed)
    fresh = next(v for k, v in build_model(ckpt.model_config).state_dict().items() if v.ndim == 5 and v.shape[1] == 9)
    assert not torch.equal(first[:, 1:], fresh[:, 1:])

    report_path = tmp_path / "report.json"
    ev = ["evaluate", "--checkpoint", str(out), "--dataset", str(dataset), "--split", "all", "--json", str(report_path)]
    result = runner.invoke(app, ev)
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(report_path.read_text())["coronaries"]["n"] == 2

    pl = ["pseudolabel", "--checkpoint", str(out), "--dataset", str(dataset), "--out", str(tmp_path / "pl")]
    result = runner.invoke(app, pl)
    assert result.exit_code == 0, (result.output, result.exception)
    assert sorted(p.name for p in (tmp_path / "pl" / "coronaries").glob("*.npz")) == ["case-a.npz", "case-b.npz"]

    # distillation from those pseudo-labels: a small student, seeded, one loader worker
    student = tmp_path / "student.pt"
    args = ["train", "--dataset", str(dataset), "--model", "student", "--task", "coronaries", "--feature-size", "12"]
    args += ["--pseudo", str(tmp_path / "pl"), "--patch", "64", "--steps", "2", "--batch-size", "1", "--seed", "5"]
    args += ["--workers", "1", "--device", "cpu", "--out", str(student)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    ckpt = load_checkpoint(student)
    assert (ckpt.model_config.feature_size, ckpt.train_config.seed) == (12, 5)
    assert ckpt.train_config.num_workers == 1
