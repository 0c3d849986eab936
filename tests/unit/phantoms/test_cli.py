"""The ``cardiofm phantoms`` command line: federation and case generation, option errors, version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from cardiofm import __version__
from cardiofm.cli.main import app
from cardiofm.contracts.federation import FederationRecord
from cardiofm.errors import ConfigError
from cardiofm.labels.formats import read_landmarks_json

CLI = Path(sys.executable).parent / "cardiofm"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_federation_command_writes_federation_and_prints_summary(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "fed"
    args = [
        "phantoms",
        "federation",
        "--out",
        str(out),
        "--sites",
        "2",
        "--cases-per-site",
        "1",
        "--size",
        "tiny",
        "--series-per-study",
        "2",
        "--seed",
        "3",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    for text in ("site-01", "site-02", "total"):
        assert text in result.stdout, text
    record = FederationRecord.model_validate_json((out / "federation.json").read_text())
    assert [s.site_id for s in record.sites] == ["site-01", "site-02"]
    assert record.seed == 3
    assert record.size["name"] == "tiny"
    assert all(len(s.studies) == 1 and len(s.studies[0].series) == 2 for s in record.sites)
    assert not any(s.held_out for s in record.sites), "two sites: none held out by default"
    assert list((out / "site-01" / "pacs").rglob("*.dcm"))


def test_held_out_sites_must_leave_a_training_site(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "fed"
    args = ["phantoms", "federation", "--out", str(out), "--sites", "2", "--held-out-sites", "2", "--size", "tiny"]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)
    assert "--held-out-sites 2" in str(result.exception)
    assert "no training site" in str(result.exception)
    assert not (out / "federation.json").exists()


def test_unknown_size_names_the_presets(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["phantoms", "federation", "--out", str(tmp_path / "f"), "--size", "huge"])
    assert isinstance(result.exception, ConfigError)
    message = str(result.exception)
    assert "huge" in message
    for preset in ("tiny", "small", "full"):
        assert preset in message


@pytest.mark.skipif(not CLI.is_file(), reason="cardiofm console script not installed next to the interpreter")
def test_console_script_maps_config_error_to_exit_code_2(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(CLI), "phantoms", "federation", "--out", str(tmp_path / "f"), "--sites", "2", "--held-out-sites", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == ConfigError.exit_code == 2, run.stderr
    assert "no training site" in run.stderr
    assert "Traceback" not in run.stderr


def test_case_command_writes_study_and_ground_truth(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "case"
    result = runner.invoke(app, ["phantoms", "case", "--out", str(out), "--size", "tiny", "--seed", "5"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    dicoms = list((out / "pacs").rglob("*.dcm"))
    assert len(dicoms) == 40, "one series of the tiny preset (40 slices)"
    points = read_landmarks_json(out / "ground_truth" / "landmarks.json")
    assert len(points) == 7
    assert (out / "ground_truth" / "heart.nii.gz").is_file()
    assert "case-0001" in result.stdout


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"cardiofm {__version__}"


def test_matrix_slices_and_profile_override_the_preset(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "fed"
    args = ["phantoms", "federation", "--out", str(out), "--sites", "1", "--cases-per-site", "1"]
    args += ["--series-per-study", "1", "--size", "tiny", "--matrix", "48", "--slices", "24"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    record = FederationRecord.model_validate_json((out / "federation.json").read_text())
    assert (record.size["matrix"], record.size["slices"]) == (48, 24)
    vendors = set()
    for profile in ("0", "1"):
        case = tmp_path / f"case-{profile}"
        args = ["phantoms", "case", "--out", str(case), "--profile", profile, "--matrix", "40", "--slices", "12"]
        result = runner.invoke(app, [*args, "--size", "tiny"])
        assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
        files = sorted((case / "pacs").rglob("*.dcm"))
        assert len(files) == 12
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert (ds.Rows, ds.Columns) == (40, 40)
        vendors.add(str(ds.Manufacturer))
    assert len(vendors) == 2  # another scanner profile, another vendor
