"""``cardiofm measure`` through the console script: files in, measurements.json and a table out, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cardiofm.contracts.measurements import MeasurementReport, PredictedLandmarks
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.nifti import save_nifti
from cardiofm.labels.formats import write_landmarks_json, write_mrk_json
from cardiofm.measurements.report import measure_all
from cardiofm.phantoms.anatomy import sample_anatomy
from cardiofm.phantoms.render import Contrast, render

CARDIOFM = str(Path(sys.executable).with_name("cardiofm"))


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CARDIOFM, "measure", *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    anatomy = sample_anatomy(np.random.default_rng(1))
    origin = tuple(float(c) - 40.0 for c in anatomy.root.centre)
    grid = Grid((81, 81, 81), (1.0, 1.0, 1.0), (origin[0], origin[1], origin[2]))
    r = render(
        anatomy, grid, Contrast.enhanced_scan(350.0, "optimal"), 20.0, np.random.default_rng(0), with_labels=True
    )
    assert r.calcification is not None
    root = tmp_path_factory.mktemp("measure-case")
    points = {k: (float(v[0]), float(v[1]), float(v[2])) for k, v in anatomy.landmarks.items()}
    return {
        "landmarks": write_landmarks_json(root / "landmarks.json", points),
        "ct": save_nifti(root / "image.nii.gz", np.round(r.hu).astype(np.int16), grid),
        "calcification": save_nifti(root / "calcification.nii.gz", r.calcification, grid),
        "root": root,
    }


def test_measure_writes_the_report_and_prints_a_table(case: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run(
        "--landmarks", case["landmarks"], "--ct", case["ct"], "--calcification", case["calcification"],
        "--out", out, "--calcium-hu-rule", "fixed-850",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "annulus_area_mm2" in result.stdout
    assert "measurements.json" in result.stdout
    raw = json.loads((out / "measurements.json").read_text())
    assert raw["schema"] == "cardiofm.measurements/1"
    report = MeasurementReport.model_validate(raw)
    # the same numbers as the library on the same files (the CT went through int16 NIfTI and back)
    from cardiofm.imaging.nifti import load_nifti
    from cardiofm.labels.formats import read_landmarks_json

    ct = load_nifti(case["ct"], float32=True)
    calc = load_nifti(case["calcification"])
    direct = measure_all(read_landmarks_json(case["landmarks"]), ct, calc, calcium_rule="fixed-850")
    assert report == direct
    assert report.get("annulus_area_mm2").available
    assert "850" in (report.get("calcium_volume_total_mm3").method or "")


def test_measure_reads_a_prediction_with_missing_points(case: dict[str, Path], tmp_path: Path) -> None:
    points = json.loads(case["landmarks"].read_text())["points"]
    del points["NCC"]
    prediction = PredictedLandmarks(points=points, confidence=dict.fromkeys(points, 0.9), missing=["NCC"])
    path = tmp_path / "landmarks.json"
    path.write_text(prediction.model_dump_json(indent=2))
    out = tmp_path / "out"
    result = _run("--landmarks", path, "--ct", case["ct"], "--out", out, "--non-contrast")
    assert result.returncode == 0, result.stderr
    report = MeasurementReport.model_validate_json((out / "measurements.json").read_text())
    assert report.annular_plane is None
    assert "missing: NCC" in (report.get("basal_ring_diameter_mm").reason or "")
    assert report.get("ms_length_mm").available
    assert not report.get("agatston_score").available


def test_measure_reads_a_slicer_markups_file(case: dict[str, Path], tmp_path: Path) -> None:
    points = json.loads(case["landmarks"].read_text())["points"]
    path = write_mrk_json(tmp_path / "points.mrk.json", {k: tuple(v) for k, v in points.items()})
    out = tmp_path / "out"
    result = _run("--landmarks", path, "--out", out)
    assert result.returncode == 0, result.stderr
    report = MeasurementReport.model_validate_json((out / "measurements.json").read_text())
    assert report.get("annulus_area_mm2").reason == "no CT given"
    assert report.get("rco_height_mm").available


def test_a_bad_landmarks_file_fails_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "landmarks.json"
    bad.write_text('{"points": {"RCC": [1, 2, 3],')
    result = _run("--landmarks", bad, "--out", tmp_path / "out")
    assert result.returncode == 4  # LabelError
    assert "landmarks.json" in result.stderr
    assert "not valid JSON" in result.stderr
    assert not (tmp_path / "out" / "measurements.json").exists()
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"points": {"XYZ": [1, 2, 3]}, "missing": []}))
    result = _run("--landmarks", wrong, "--out", tmp_path / "out")
    assert result.returncode == 4
    assert "unknown landmark name" in result.stderr


def test_an_unknown_calcium_rule_is_a_config_error(case: dict[str, Path], tmp_path: Path) -> None:
    result = _run("--landmarks", case["landmarks"], "--out", tmp_path / "out", "--calcium-hu-rule", "median")
    assert result.returncode == 2
    assert "--calcium-hu-rule" in result.stderr
