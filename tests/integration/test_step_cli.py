"""``cardiofm step <name>`` as a Kaapana container runs it: environment contract in, exit code out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cardiofm.contracts.steps import ConvertParams, SelectSeriesParams
from cardiofm.errors import EXIT_OK, EXIT_SKIP, ConfigError, InputDataError
from cardiofm.imaging.nifti import read_grid
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.phantoms.scanners import StudySize
from cardiofm.pipeline.case_steps import select_case

pytestmark = pytest.mark.integration

CARDIOFM = str(Path(sys.executable).parent / "cardiofm")


@pytest.fixture(scope="module")
def selected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A ``select-series`` output folder of one study, made by the step's own case function."""
    root = tmp_path_factory.mktemp("one-study")
    settings = FederationSettings(
        sites=1, cases_per_site=1, seed=3, size=StudySize("t", 96, 80), series_per_study=2, held_out_sites=0
    )
    record = generate_federation(root / "fed", settings)
    site_dir = root / "fed" / record.sites[0].folder
    out = root / "select-series"
    out.mkdir()
    select_case(site_dir / "pacs", out, SelectSeriesParams(site_config=str(site_dir / "site.yaml")))
    study = record.sites[0].studies[0]
    assert json.loads((out / "study.json").read_text())["series_uid"] == study.correct_series_uid
    return out, str(study.correct_series_uid)


def run_step(step: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in _CONTRACT}
    full.update(env)
    return subprocess.run(
        [CARDIOFM, "step", step], env=full, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


_CONTRACT = ("WORKFLOW_DIR", "BATCH_NAME", "OPERATOR_IN_DIR", "OPERATOR_OUT_DIR", "RUN_ID", "DAG_ID", "TASK_ID")


def contract(workflow: Path, **overrides: str) -> dict[str, str]:
    env = {
        "WORKFLOW_DIR": str(workflow),
        "BATCH_NAME": "batch",
        "OPERATOR_IN_DIR": "select-series",
        "OPERATOR_OUT_DIR": "convert",
        "RUN_ID": "manual__test",
        "DAG_ID": "cardiofm-prepare",
        "TASK_ID": "convert",
    }
    env.update(overrides)
    return env


def test_convert_step_over_a_batch(selected: tuple[Path, str], tmp_path: Path) -> None:
    sel_dir, series_uid = selected
    workflow = tmp_path / "wf"
    case = workflow / "batch" / "case-0001"
    (case / "select-series" / "series").mkdir(parents=True)
    for f in sorted((sel_dir / "series").iterdir()):  # the links point at the site's files
        (case / "select-series" / "series" / f.name).symlink_to(f.resolve())
    for name in ("selection.json", "study.json"):
        (case / "select-series" / name).write_bytes((sel_dir / name).read_bytes())
    env = {**contract(workflow), **ConvertParams(name="ct", compress=True).to_env()}

    proc = run_step("convert", env, tmp_path)
    assert proc.returncode == EXIT_OK, proc.stderr[-2000:]
    assert "1 in, 1 done, 0 quarantined" in proc.stdout
    summary = json.loads((workflow / "convert" / "summary.json").read_text())
    assert (summary["step"], summary["in"], summary["done"], summary["quarantined"]) == ("convert", 1, 1, [])
    out = case / "convert"
    assert read_grid(out / "ct.nii.gz").shape[2] == len(list((sel_dir / "series").iterdir()))
    assert json.loads((out / "study.json").read_text())["series_uid"] == series_uid
    record = json.loads((case / "case.json").read_text())
    assert [s["step"] for s in record["steps"]] == ["convert"]


def test_empty_batch_is_skipped(tmp_path: Path) -> None:
    workflow = tmp_path / "wf"
    (workflow / "batch").mkdir(parents=True)
    proc = run_step("convert", contract(workflow), tmp_path)
    assert proc.returncode == EXIT_SKIP == 126, proc.stderr[-2000:]
    assert json.loads((workflow / "convert" / "summary.json").read_text())["in"] == 0


def test_all_cases_failing_is_an_input_error(tmp_path: Path) -> None:
    workflow = tmp_path / "wf"
    (workflow / "batch" / "case-0001" / "select-series").mkdir(parents=True)  # no series in it
    proc = run_step("convert", contract(workflow), tmp_path)
    assert proc.returncode == InputDataError.exit_code, proc.stderr[-2000:]
    marker = json.loads((workflow / "batch" / "case-0001" / "convert" / "quarantine.json").read_text())
    assert marker["step"] == "convert"
    assert "run select-series first" in marker["reason"]


@pytest.mark.parametrize(
    ("drop", "extra", "named"),
    [
        ("OPERATOR_IN_DIR", {}, "OPERATOR_IN_DIR"),
        ("WORKFLOW_DIR", {}, "WORKFLOW_DIR"),
        (None, {"OPERATOR_OUT_DIR": "../escape"}, "OPERATOR_OUT_DIR"),
        (None, {"TIMEOUT_S": "-1"}, "TIMEOUT_S"),
    ],
    ids=["no-in-dir", "no-workflow-dir", "out-dir-escapes", "bad-param"],
)
def test_config_errors_exit_2_and_name_the_variable(
    tmp_path: Path, drop: str | None, extra: dict[str, str], named: str
) -> None:
    workflow = tmp_path / "wf"
    (workflow / "batch").mkdir(parents=True)
    env = {**contract(workflow), **extra}
    if drop is not None:
        del env[drop]
    proc = run_step("convert", env, tmp_path)
    assert proc.returncode == ConfigError.exit_code == 2
    assert named in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "escape").exists()


def test_prepare_report_fails_a_run_whose_every_study_was_quarantined(tmp_path: Path) -> None:
    """The reports are written, and the task fails: a clinic admin sees a red run, not a green empty one."""
    from cardiofm.pipeline.report_step import PrepareResult

    assert PrepareResult(studies_in=2, prepared=0, quarantined=[{"kind": "study"}] * 2).exit_code() == 3
    assert PrepareResult(studies_in=2, prepared=1, quarantined=[{"kind": "study"}]).exit_code() == 0
    assert PrepareResult(studies_in=0, prepared=0).exit_code() == 126
    assert PrepareResult(studies_in=2, prepared=1).exit_code() == 3  # unbalanced: a study went missing
