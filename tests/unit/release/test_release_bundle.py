"""The release as a MONAI bundle: ``monai.bundle run`` and ``verify_metadata``, offline.

Every command runs in a fresh interpreter whose sockets cannot connect (a ``sitecustomize`` on PYTHONPATH
replaces ``socket.connect``) and whose proxies point at a closed port, so any download attempt fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from release_helpers import random_ct, tiny_checkpoint

from cardiofm.errors import InputDataError
from cardiofm.imaging.nifti import load_nifti, save_nifti
from cardiofm.models.config import ModelConfig
from cardiofm.models.registry import build_model
from cardiofm.release import write_release
from cardiofm.release.bundle import load_ct, run_inference
from cardiofm.training.checkpoint import load_checkpoint, save_checkpoint
from cardiofm.training.config import TrainConfig
from cardiofm.training.inference import predict_case

NO_NETWORK = """
import socket

def _refuse(*args, **kwargs):
    raise OSError("network access attempted during an offline bundle test")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    return write_release(tiny_checkpoint(root / "model.pt"), root / "release")


def _offline_env(tmp: Path) -> dict[str, str]:
    guard = tmp / "offline"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "PYTHONPATH": str(guard), "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "ALL_PROXY": closed}
    env.pop("NO_PROXY", None)
    return env


def _monai(args: list[str], cwd: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "monai.bundle", *args]
    return subprocess.run(command, cwd=cwd, env=_offline_env(tmp), capture_output=True, text=True, timeout=120)


def test_the_offline_guard_really_refuses_connections(tmp_path: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)"],
        env=_offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode != 0
    assert "network access attempted" in probe.stderr


def test_bundle_run_predicts_a_nifti_like_cardiofm(bundle: Path, tmp_path: Path) -> None:
    ct = random_ct(tmp_path / "ct.nii.gz", spacing_mm=1.5)  # resampled to 1 mm and reoriented by the runner
    out = tmp_path / "out"
    args = ["run", "--config_file", "configs/inference.json", "--meta_file", "configs/metadata.json"]
    args += ["--bundle_root", ".", "--input_image", str(ct), "--output_dir", str(out)]
    result = _monai(args, bundle, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "prediction.json").read_text())
    assert sorted(summary["files"]) == ["foreground-landmarks.nii.gz", "landmarks.json"]
    points = json.loads((out / "landmarks.json").read_text())["points"]
    foreground, grid = load_nifti(out / "foreground-landmarks.nii.gz")
    assert grid.spacing_mm == pytest.approx((1.0, 1.0, 1.0))
    assert tuple(summary["grid"]["shape"]) == foreground.shape == (30, 27, 21)
    assert 0.0 <= float(np.min(foreground)) <= float(np.max(foreground)) <= 1.0

    from cardiofm.release import load_release

    ckpt = load_release(bundle)  # the same release in this process, through cardiofm's own inference
    hu, in_grid = load_ct(ct, ckpt)
    expected = predict_case(ckpt, ckpt.build(), hu, in_grid, device=torch.device("cpu"))
    assert expected.landmarks  # random weights decode some landmarks, not necessarily all five
    assert set(points) == set(summary["landmarks"]) == set(expected.landmarks)
    for name, point in expected.landmarks.items():
        assert points[name] == pytest.approx(list(point.lps_mm), abs=1e-4)
        assert summary["landmarks"][name]["lps_mm"] == pytest.approx(list(point.lps_mm), abs=1e-4)
        assert summary["landmarks"][name]["confidence"] == pytest.approx(point.confidence, abs=1e-5)


def test_bundle_run_names_a_missing_input(bundle: Path, tmp_path: Path) -> None:
    args = ["run", "--config_file", "configs/inference.json", "--meta_file", "configs/metadata.json"]
    args += ["--input_image", str(tmp_path / "absent.nii.gz"), "--output_dir", str(tmp_path / "out")]
    result = _monai(args, bundle, tmp_path)
    assert result.returncode != 0
    assert "input image absent.nii.gz not found" in result.stderr


def test_verify_metadata_passes_offline_with_the_shipped_schema(bundle: Path, tmp_path: Path) -> None:
    args = ["verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", "configs/meta_schema.json"]
    result = _monai(args, bundle, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "skipped downloading" in log
    assert "metadata is verified with no error" in log


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        (("task",), "'task' is a required property"),
        (("network_data_format", "outputs"), "'outputs' is a required property"),
        (("network_data_format", "inputs", "image", "num_channels"), "'num_channels' is a required property"),
    ],
)
def test_verify_metadata_fails_without_a_required_field(
    bundle: Path, tmp_path: Path, drop: tuple[str, ...], message: str
) -> None:
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    parent = metadata
    for key in drop[:-1]:
        parent = parent[key]
    del parent[drop[-1]]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(metadata))
    schema = bundle / "configs" / "meta_schema.json"
    result = _monai(["verify_metadata", "--meta_file", str(broken), "--filepath", str(schema)], tmp_path, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr


def test_runner_conditions_on_a_heart_map_and_writes_masks(tmp_path: Path) -> None:
    cfg = ModelConfig.teacher("coronaries", heart_conditioning="onehot", filters=(4, 8, 16, 32))
    train = TrainConfig(tasks=("coronaries",), patch_size=(16, 16, 16))
    torch.manual_seed(0)
    folder = write_release(
        load_checkpoint(save_checkpoint(tmp_path / "m.pt", build_model(cfg), cfg, train, [])), tmp_path / "release"
    )
    ct = random_ct(tmp_path / "ct.nii.gz")
    _, grid = load_nifti(ct)
    heart = np.random.default_rng(2).integers(0, 8, grid.shape).astype(np.uint8)
    save_nifti(tmp_path / "heart.nii.gz", heart, grid)
    with pytest.raises(InputDataError, match="heart-conditioned"):
        run_inference(str(folder), str(ct), str(tmp_path / "none"))
    summary = json.loads(
        run_inference(
            str(folder), str(ct), str(tmp_path / "out"), heart_image=str(tmp_path / "heart.nii.gz")
        ).read_text()
    )
    assert sorted(summary["files"]) == ["foreground-coronaries.nii.gz", "landmarks.json", "mask-coronaries.nii.gz"]
    mask, mask_grid = load_nifti(tmp_path / "out" / "mask-coronaries.nii.gz")
    assert mask.shape == mask_grid.shape == tuple(summary["grid"]["shape"])
    assert set(np.unique(mask)) <= {0, 1}
    assert json.loads((tmp_path / "out" / "landmarks.json").read_text())["points"] == {}
