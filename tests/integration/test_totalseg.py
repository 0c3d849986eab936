"""TotalSegmentator heart segmenter: the real code path in the segmenter venv, with STAND-IN weights.

Runs from the main venv and drives ``.venvs/segmenter`` by subprocess. The stand-in weights
(:mod:`cardiofm.imaging.totalseg_standin`) are random: the masks are meaningless, only the plumbing
(offline weights lookup, trainer pre-registration, spawn guard, grid round trip, error mapping) is tested.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cardiofm.errors import ConfigError, ExternalToolError, MissingResourceError
from cardiofm.imaging.geometry import Grid, as_point
from cardiofm.imaging.nifti import load_nifti, save_nifti
from cardiofm.imaging.totalseg import (
    DATASET_CROP,
    DATASET_FAST,
    ENV_HOME,
    ENV_WEIGHTS,
    check_weights,
    model_subfolder,
    run_in_segmenter_venv,
)
from cardiofm.phantoms.anatomy import sample_anatomy
from cardiofm.phantoms.render import Contrast, render

pytestmark = [pytest.mark.integration, pytest.mark.slow]

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SEGMENTER_PYTHON = REPO / ".venvs" / "segmenter" / "bin" / "python"
SHAPE = (96, 96, 48)
SPACING_MM = (2.5, 2.5, 2.5)
TIMEOUT_S = 600.0
#: Any download attempt fails fast instead of hanging (and would show up as a ConnectionError).
DEAD_PROXY = "http://127.0.0.1:9"
OFFLINE_ENV = {
    "HTTP_PROXY": DEAD_PROXY,
    "HTTPS_PROXY": DEAD_PROXY,
    "http_proxy": DEAD_PROXY,
    "https_proxy": DEAD_PROXY,
    "NO_PROXY": "",
    "no_proxy": "",
}


@pytest.fixture(scope="session")
def segmenter_python() -> Path:
    """The segmenter venv's interpreter; its absence is a failure, not a skip."""
    if not SEGMENTER_PYTHON.exists():
        pytest.fail(f"{SEGMENTER_PYTHON} not found: run `make segmenter`")
    return SEGMENTER_PYTHON


@pytest.fixture(scope="session")
def standin_home(segmenter_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TOTALSEG_HOME_DIR holding STAND-IN (random) weights for datasets 297 and 298."""
    home = tmp_path_factory.mktemp("totalseg_home")
    code = (
        "import sys; from pathlib import Path; "
        "from cardiofm.imaging.totalseg_standin import write_standin_weights; "
        "write_standin_weights(Path(sys.argv[1]))"
    )
    proc = subprocess.run(
        [str(segmenter_python), "-c", code, str(home)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return home


@pytest.fixture(scope="session")
def phantom_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A contrast-enhanced phantom CT, 96×96×48 at 2.5 mm, int16 HU."""
    a = sample_anatomy(np.random.default_rng(3))
    centre = np.array([a.heart_centre[0], a.heart_centre[1], a.root.centre[2] - 35.0])
    origin = centre - (np.asarray(SHAPE) - 1) / 2 * np.asarray(SPACING_MM)
    grid = Grid(shape=SHAPE, spacing_mm=SPACING_MM, origin_lps_mm=as_point(origin))
    out = render(a, grid, Contrast.enhanced_scan(400.0, "optimal"), 20.0, np.random.default_rng(3), fov_mm=230.0)
    hu = np.clip(np.rint(out.hu), -1024, 3071).astype(np.int16)
    return save_nifti(tmp_path_factory.mktemp("ct") / "ct.nii.gz", hu, grid)


def test_real_path_with_standin_weights_gives_binary_mask_on_input_grid(
    segmenter_python: Path, standin_home: Path, phantom_ct: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mask" / "heart.nii.gz"
    env: dict[str, str | None] = {ENV_HOME: str(standin_home), ENV_WEIGHTS: None, **OFFLINE_ENV}
    t0 = time.perf_counter()
    result = run_in_segmenter_venv(segmenter_python, phantom_ct, out, TIMEOUT_S, env=env)
    wall = time.perf_counter() - t0
    logger.warning("TotalSegmentator real path (stand-in weights, %s voxels): %.1f s wall", SHAPE, wall)

    assert result == out.resolve()
    assert out.is_file()
    ct_img = nib.load(str(phantom_ct))
    mask_img = nib.load(str(out))
    assert mask_img.shape == ct_img.shape == SHAPE
    np.testing.assert_array_equal(mask_img.affine, ct_img.affine)
    mask = np.asarray(mask_img.dataobj)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, 1}
    assert mask.any()
    # the project's own reader accepts it as the same grid
    _, mask_grid = load_nifti(out)
    _, ct_grid = load_nifti(phantom_ct)
    assert mask_grid.shape == ct_grid.shape
    np.testing.assert_allclose(mask_grid.affine_ras, ct_grid.affine_ras, atol=1e-6)
    # usage statistics stay off
    config = json.loads((standin_home / "config.json").read_text())
    assert config["send_usage_stats"] is False


@pytest.mark.parametrize("home", ["unset", "empty"])
def test_missing_weights_raise_our_error_without_downloading(
    segmenter_python: Path, phantom_ct: Path, tmp_path: Path, home: str
) -> None:
    home_dir = tmp_path / "totalseg_home"
    home_dir.mkdir()
    env: dict[str, str | None] = {ENV_WEIGHTS: None, **OFFLINE_ENV}
    env[ENV_HOME] = None if home == "unset" else str(home_dir)
    out = tmp_path / "heart.nii.gz"
    with pytest.raises(MissingResourceError) as info:
        run_in_segmenter_venv(segmenter_python, phantom_ct, out, TIMEOUT_S, env=env)
    message = str(info.value)
    assert ENV_HOME in message
    assert ENV_WEIGHTS in message
    assert DATASET_FAST in message
    assert "totalseg_import_weights" in message
    assert "ConnectionError" not in message
    assert not out.exists()
    # nothing was downloaded or unpacked
    assert not list(home_dir.rglob("*.zip"))
    assert not (home_dir / "nnunet").exists()


def test_missing_interpreter_says_make_segmenter(phantom_ct: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingResourceError, match="make segmenter"):
        run_in_segmenter_venv(tmp_path / "nope" / "python", phantom_ct, tmp_path / "m.nii.gz", 10.0)


def test_segmenter_crash_maps_to_external_tool_error(
    segmenter_python: Path, standin_home: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    env: dict[str, str | None] = {ENV_HOME: str(standin_home), ENV_WEIGHTS: None, **OFFLINE_ENV}
    with pytest.raises(ExternalToolError) as info:
        run_in_segmenter_venv(segmenter_python, broken, tmp_path / "m.nii.gz", TIMEOUT_S, env=env)
    assert info.value.log_tail


# --- check_weights in the main venv (no TotalSegmentator import) -----------------------------------------


def _fake_model(results: Path, dataset: str) -> None:
    model = results / dataset / model_subfolder()
    (model / "fold_0").mkdir(parents=True)
    for name in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth"):
        (model / name).write_text("{}")


def test_check_weights_neither_variable_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_HOME, raising=False)
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    with pytest.raises(MissingResourceError) as info:
        check_weights()
    message = str(info.value)
    assert ENV_HOME in message
    assert ENV_WEIGHTS in message
    assert DATASET_FAST in message
    assert DATASET_CROP in message
    assert "totalseg_import_weights" in message
    assert "totalsegmentator" not in sys.modules  # the main venv never imports it


def test_check_weights_home_dir_missing_crop_model(tmp_path: Path) -> None:
    _fake_model(tmp_path / "nnunet" / "results", DATASET_FAST)
    with pytest.raises(MissingResourceError) as info:
        check_weights(env={ENV_HOME: str(tmp_path)})
    message = str(info.value)
    assert DATASET_CROP in message
    assert f"missing dataset folder(s) {DATASET_CROP}" in message
    assert ENV_HOME in message
    assert ENV_WEIGHTS in message
    assert not (tmp_path / "config.json").exists()


def test_check_weights_incomplete_folder(tmp_path: Path) -> None:
    results = tmp_path / "nnunet" / "results"
    _fake_model(results, DATASET_FAST)
    (results / DATASET_CROP).mkdir()
    with pytest.raises(MissingResourceError, match="incomplete dataset folder"):
        check_weights(env={ENV_HOME: str(tmp_path)})


def test_check_weights_home_dir_ok_writes_private_config(tmp_path: Path) -> None:
    results = tmp_path / "nnunet" / "results"
    for dataset in (DATASET_FAST, DATASET_CROP):
        _fake_model(results, dataset)
    (tmp_path / "config.json").write_text(json.dumps({"totalseg_id": "x", "send_usage_stats": True}))
    assert check_weights(env={ENV_HOME: str(tmp_path)}) == results
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {
        "totalseg_id": "x",
        "send_usage_stats": False,
        "statistics_disclaimer_shown": True,
        "prediction_counter": 0,
    }


def test_check_weights_weights_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "weights"
    _fake_model(weights, DATASET_CROP)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    env = {ENV_WEIGHTS: str(weights), ENV_HOME: str(tmp_path / "home")}
    assert check_weights(("total_fastest",), env=env) == weights
    assert json.loads((tmp_path / "home" / "config.json").read_text())["send_usage_stats"] is False
    with pytest.raises(MissingResourceError, match=DATASET_FAST):
        check_weights(("total_fast",), env=env)
    # without TOTALSEG_HOME_DIR the config goes to TotalSegmentator's default home
    assert check_weights(("total_fastest",), env={ENV_WEIGHTS: str(weights)}) == weights
    assert (
        json.loads((tmp_path / "user" / ".totalsegmentator" / "config.json").read_text())["send_usage_stats"] is False
    )


def test_check_weights_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown TotalSegmentator task"):
        check_weights(("heartchambers_highres",), env={ENV_HOME: str(tmp_path)})
