"""The predict chain's own logic: masks mapped back to the CT's native grid, inputs resolved with clear errors,
models combined one per head, the contracts refusing made-up points and numbers, series staged or quarantined."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from cardiofm.contracts.kaapana import KaapanaContext
from cardiofm.contracts.measurements import Measurement, PredictedLandmarks
from cardiofm.contracts.predict import StageSeriesParams
from cardiofm.errors import ConfigError, InputDataError
from cardiofm.imaging.geometry import Grid
from cardiofm.models.config import ModelConfig, default_heads
from cardiofm.models.registry import build_model
from cardiofm.pipeline.runner import QUARANTINE_MARKER
from cardiofm.prediction.infer import foreground_to_native, load_models
from cardiofm.prediction.inputs import resolve_input
from cardiofm.training.checkpoint import save_checkpoint
from cardiofm.training.config import TrainConfig

CENTRE = np.array([10.0, -20.0, 30.0])
RADIUS_MM = 8.0


def ball_on(grid: Grid) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij"), axis=-1).reshape(-1, 3)
    d = np.linalg.norm(grid.index_to_lps(ijk) - CENTRE, axis=1).reshape(grid.shape)
    return (d <= RADIUS_MM).astype(np.float32)


def test_a_mask_predicted_on_the_training_grid_lands_on_the_same_world_voxels_of_the_native_grid() -> None:
    # the model's grid: canonical, 2 mm; the CT's own grid: 1 mm, prone and feet-first (axes flipped and swapped)
    model_grid = Grid(shape=(20, 20, 20), spacing_mm=(2.0, 2.0, 2.0), origin_lps_mm=tuple(CENTRE - 19.0))
    native = Grid(
        shape=(50, 60, 40),
        spacing_mm=(1.0, 1.0, 1.5),
        origin_lps_mm=(40.0, 5.0, 60.0),
        direction=((0.0, -1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    )
    coarse = ball_on(model_grid)
    mask = foreground_to_native(coarse, model_grid, native)
    truth = ball_on(native) > 0
    assert mask.shape == native.shape
    agree = (mask > 0) == truth
    assert agree.mean() > 0.995
    # about the volume of the model's own 2 mm mask (the interpolated edge runs between its voxel centres)
    assert float(mask.sum()) * 1.5 == pytest.approx(float(coarse.sum()) * 8.0, rel=0.1)


def test_a_mask_outside_the_native_field_gives_an_empty_mask() -> None:
    model_grid = Grid(shape=(8, 8, 8), spacing_mm=(2.0, 2.0, 2.0), origin_lps_mm=(500.0, 500.0, 500.0))
    native = Grid(shape=(10, 10, 10), spacing_mm=(1.0, 1.0, 1.0), origin_lps_mm=(0.0, 0.0, 0.0))
    assert not foreground_to_native(np.ones((8, 8, 8), np.float32), model_grid, native).any()


def teacher(path: Path, task: str) -> Path:
    cfg = ModelConfig(name="resunet-teacher", heads=default_heads(task), filters=(4, 8, 16, 32))
    return save_checkpoint(path, build_model(cfg), cfg, TrainConfig(tasks=(task,), patch_size=(32, 32, 32)), [])


def test_models_are_one_per_head(tmp_path: Path) -> None:
    a, b = teacher(tmp_path / "a.pt", "landmarks"), teacher(tmp_path / "b.pt", "landmarks")
    with pytest.raises(ConfigError, match="both predict 'landmarks'"):
        load_models([a, b])
    with pytest.raises(ConfigError, match="at least one --model"):
        load_models([])
    both = load_models([a, teacher(tmp_path / "c.pt", "calcification")])
    assert [m.info.name for m in both] == ["a", "c"]
    assert all(len(m.info.sha256) == 64 for m in both)


def test_inputs_are_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of --input"):
        resolve_input(None, tmp_path)
    with pytest.raises(ConfigError, match="exactly one of --input"):
        resolve_input(tmp_path, tmp_path, series_uid="1.2.3")
    with pytest.raises(InputDataError, match="does not exist"):
        resolve_input(tmp_path / "nothing.nii.gz", tmp_path)
    (tmp_path / "notes.txt").write_text("not a CT")
    with pytest.raises(InputDataError, match="not NIfTI"):
        resolve_input(tmp_path / "notes.txt", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="no CT DICOM files"):
        resolve_input(tmp_path / "empty", tmp_path)
    with pytest.raises(ConfigError, match="needs a PACS"):
        resolve_input(None, tmp_path, series_uid="1.2.3")


def test_the_landmarks_contract_refuses_made_up_points_and_the_measurement_contract_made_up_numbers() -> None:
    with pytest.raises(ValidationError, match="both placed and listed as missing"):
        PredictedLandmarks(points={"RCC": (1.0, 2.0, 3.0)}, missing=["RCC"])
    with pytest.raises(ValidationError, match="non-finite"):
        PredictedLandmarks(points={"RCC": (float("nan"), 2.0, 3.0)})
    with pytest.raises(ValidationError, match="no finite value"):
        Measurement(name="annulus_area_mm2", group="annulus", unit="mm2", value=None)
    with pytest.raises(ValidationError, match="needs a reason and no value"):
        Measurement(name="annulus_area_mm2", group="annulus", unit="mm2", value=400.0, available=False, reason="x")


def test_a_series_that_is_not_in_the_folder_is_quarantined_and_the_others_staged(tmp_path: Path) -> None:
    from cardiofm.phantoms.federation import FederationSettings, generate_federation
    from cardiofm.phantoms.scanners import StudySize
    from cardiofm.pipeline.stage_series import series_key, stage_series

    record = generate_federation(
        tmp_path / "fed",
        FederationSettings(sites=1, cases_per_site=1, seed=3, size=StudySize("t", 32, 16), held_out_sites=0),
    )
    site = record.sites[0]
    uid = str(site.studies[0].correct_series_uid)
    ctx = KaapanaContext(workflow_dir=tmp_path / "wf", operator_in_dir="none", operator_out_dir="stage-series")
    params = StageSeriesParams(series_uids=[uid, "1.2.3.4"], dicom_folder=str(tmp_path / "fed" / site.folder / "pacs"))
    summary = stage_series(ctx, params, {})
    assert summary.done == [series_key(uid)]
    assert list(summary.quarantined) == [series_key("1.2.3.4")]
    assert "not found" in summary.quarantined[series_key("1.2.3.4")]
    staged = ctx.batch_dir / series_key(uid) / "stage-series" / "series"
    assert len(list(staged.glob("*.dcm"))) == site.studies[0].series[0].slices
    marker = json.loads((ctx.batch_dir / series_key("1.2.3.4") / "stage-series" / QUARANTINE_MARKER).read_text())
    assert marker["step"] == "stage-series"
    assert uid not in str(list(ctx.batch_dir.iterdir()))  # folder names are hashes, not UIDs
