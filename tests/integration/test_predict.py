"""What a clinician gets: ``cardiofm predict`` on a phantom CT from its DICOM series, its NIfTI and the PACS, and
the ``cardiofm-predict`` DAG run by Airflow on the local backend, all with the same model and the same answer.

The model is a landmark teacher overfit to this phantom, so its points must land within a few millimetres of the
generator's truth on the CT's own grid; the NIfTI and PACS routes must give the very same points; the SR sent to
the PACS must be there afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from orthanc_pacs import PASSWORD, USER, Pacs, running_orthanc
from trained_teacher import Trained

from cardiofm.constants import TASK_LANDMARKS
from cardiofm.contracts.measurements import MeasurementReport, PredictedLandmarks
from cardiofm.dicom.convert import convert_series
from cardiofm.dicom.pacs import DicomWebSource
from cardiofm.pipeline.dag_runner import LocalAirflow, run_dag
from cardiofm.release import write_release
from cardiofm.training.checkpoint import load_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CARDIOFM = str(Path(sys.executable).parent / "cardiofm")
PASSWORD_ENV = "TEST_PACS_PASSWORD"
AIRFLOW_PYTHON = Path(__file__).resolve().parents[2] / ".venvs" / "airflow" / "bin" / "python"
#: The overfit teacher lands within ~1 mm of the truth on its 2 mm grid; the bound leaves room for the crop.
MAX_ERROR_MM = 3.0


@dataclass
class Case:
    series_dir: Path
    truth: dict[str, list[float]]
    series_uid: str
    model: Path
    release: Path
    pacs: Pacs
    #: the prediction from the DICOM folder, which the other routes must reproduce
    from_dicom: Path


def predict(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CARDIOFM, "predict", "--device", "cpu", *args],
        env={**os.environ, PASSWORD_ENV: PASSWORD, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def ok(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout + run.stderr


def points(folder: Path) -> dict[str, tuple[float, float, float]]:
    return PredictedLandmarks.model_validate_json((folder / "landmarks.json").read_text()).points


@pytest.fixture(scope="module")
def case(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    root = tmp_path_factory.mktemp("predict")
    series_dir, truth, uid = trained.phantom()
    release = write_release(load_checkpoint(trained.result.checkpoint), root / "release")
    ok(predict("--model", str(trained.result.checkpoint), "--input", str(series_dir), "--out", str(root / "dicom")))
    with running_orthanc(root / "orthanc") as pacs:
        pacs.upload(sorted(p for p in series_dir.rglob("*") if p.is_file()))
        yield Case(series_dir, truth, uid, trained.result.checkpoint, release, pacs, root / "dicom")


def test_from_the_dicom_series_the_points_land_on_the_truth_and_every_output_is_written(case: Case) -> None:
    out = case.from_dicom
    found = PredictedLandmarks.model_validate_json((out / "landmarks.json").read_text())
    assert found.missing == []
    assert found.model is not None
    assert len(found.model.sha256) == 64
    for name in TASK_LANDMARKS["landmarks"]:
        error = float(np.linalg.norm(np.subtract(found.points[name], case.truth[name])))
        assert error < MAX_ERROR_MM, f"{name}: {error:.2f} mm from the truth"
    for name in ("measurements.json", "report.png", "landmarks.mps", "landmarks.mrk.json", "landmarks.csv", "sr.dcm"):
        assert (out / name).is_file(), name
    assert not (out / "calcification.nii.gz").exists()  # this model has no calcification head: nothing made up
    report = MeasurementReport.model_validate_json((out / "measurements.json").read_text())
    assert report.get("annulus_area_mm2").available
    assert not report.get("ms_length_mm").available  # no septum head: not available, with a reason
    sr = pydicom.dcmread(out / "sr.dcm")
    source = pydicom.dcmread(next(p for p in case.series_dir.rglob("*") if p.is_file()), stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert not [p for p in out.iterdir() if p.name.startswith("cardiofm-predict-")]  # the work folder is gone


def test_from_the_nifti_the_points_are_the_same(case: Case, tmp_path: Path) -> None:
    files = sorted(p for p in case.series_dir.rglob("*") if p.is_file())
    convert_series(files, tmp_path / "nifti", name="ct")
    # an earlier prediction in the same folder (with a SEG and SR from a DICOM input): replaced, not mixed in
    (tmp_path / "o").mkdir()
    for name in ("sr.dcm", "seg.dcm", "calcification.nii.gz"):
        (tmp_path / "o" / name).write_bytes(b"earlier run")
    ok(
        predict(
            "--model", str(case.model), "--input", str(tmp_path / "nifti" / "ct.nii.gz"), "--out", str(tmp_path / "o")
        )
    )
    a, b = points(case.from_dicom), points(tmp_path / "o")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-3)
    for name in ("sr.dcm", "seg.dcm", "calcification.nii.gz"):  # no DICOM source, no mask head: none of these
        assert not (tmp_path / "o" / name).exists(), name


def test_from_the_pacs_with_the_release_the_points_are_the_same_and_the_sr_is_stored_back(
    case: Case, tmp_path: Path
) -> None:
    run = predict(
        *("--model", str(case.release), "--pacs-series", case.series_uid, "--out", str(tmp_path / "o")),
        *("--dicomweb-url", case.pacs.dicomweb, "--pacs-user", USER, "--pacs-password-env", PASSWORD_ENV, "--send"),
    )
    log = ok(run)
    assert PASSWORD not in log
    a, b = points(case.from_dicom), points(tmp_path / "o")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-3)
    sr = pydicom.dcmread(tmp_path / "o" / "sr.dcm")
    series = DicomWebSource(case.pacs.dicomweb, username=USER, password=PASSWORD).list_series(sr.StudyInstanceUID)
    assert sr.SeriesInstanceUID in {s.uid for s in series}


def test_over_dimse_with_a_stricter_confidence_the_unsure_points_are_missing_and_nothing_else_changes(
    case: Case, tmp_path: Path
) -> None:
    study = pydicom.dcmread(next(p for p in case.series_dir.rglob("*") if p.is_file()), stop_before_pixels=True)
    out = tmp_path / "o"
    run = predict(
        *("--model", str(case.model), "--pacs-series", case.series_uid, "--study-uid", study.StudyInstanceUID),
        *("--dimse", f"127.0.0.1:{case.pacs.dicom_port}", "--called-ae", "ORTHANC", "--calling-ae", "CARDIOFM"),
        *("--segmenter", "fallback", "--min-confidence", "0.9", "--non-contrast", "--keep-work", "--out", str(out)),
    )
    ok(run)
    before = PredictedLandmarks.model_validate_json((case.from_dicom / "landmarks.json").read_text())
    now = PredictedLandmarks.model_validate_json((out / "landmarks.json").read_text())
    unsure = sorted(n for n, c in before.confidence.items() if c < 0.9)
    assert sorted(now.missing) == unsure
    for name, xyz in now.points.items():  # the points it keeps are the very same
        np.testing.assert_allclose(xyz, before.points[name], atol=1e-3)
    agatston = MeasurementReport.model_validate_json((out / "measurements.json").read_text()).get("agatston_score")
    assert not agatston.available
    assert "contrast-enhanced" not in str(agatston.reason)  # a non-contrast series: only the missing mask stops it
    work = [p for p in out.iterdir() if p.name.startswith("cardiofm-predict-")]
    assert len(work) == 1
    assert (work[0] / "crop" / "image.nii.gz").is_file()  # kept for inspection


def test_totalsegmentator_without_weights_is_a_clear_error(case: Case, tmp_path: Path) -> None:
    segmenter_python = Path(__file__).resolve().parents[2] / ".venvs" / "segmenter" / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("TOTALSEG_HOME_DIR", "TOTALSEG_WEIGHTS_PATH")}
    run = subprocess.run(
        [CARDIOFM, "predict", "--model", str(case.model), "--input", str(case.series_dir), "--out", str(tmp_path / "o")]
        + ["--segmenter", "totalsegmentator", "--segmenter-python", str(segmenter_python), "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode != 0
    assert "TOTALSEG_HOME_DIR" in run.stderr
    assert not (tmp_path / "o" / "landmarks.json").exists()


def test_a_wrong_input_is_a_clear_error_and_writes_nothing(case: Case, tmp_path: Path) -> None:
    run = predict("--model", str(case.model), "--input", str(tmp_path / "none.nii.gz"), "--out", str(tmp_path / "o"))
    assert run.returncode == 3, run.stderr
    assert "does not exist" in run.stderr
    assert not list((tmp_path / "o").glob("*.json"))


def test_the_predict_dag_runs_on_the_local_backend_and_stores_its_results_in_the_pacs(
    case: Case, tmp_path: Path
) -> None:
    form: dict[str, object] = {
        "model": [str(case.release)],
        "series_uids": [case.series_uid],
        "dicomweb_url": case.pacs.dicomweb,
        "pacs_user": USER,
        "pacs_password_env": PASSWORD_ENV,
        "segmenter": "fallback",
        "device": "cpu",
    }
    airflow = LocalAirflow(python=AIRFLOW_PYTHON, scratch=tmp_path / "scratch")
    result = run_dag(
        airflow, "cardiofm-predict", form, name="site", env={PASSWORD_ENV: PASSWORD, "OMP_NUM_THREADS": "1"}
    )
    assert result.tasks == dict.fromkeys(
        ("stage-series", "convert", "crop-heart", "predict", "measure", "export-dicom", "send-results"), "success"
    )
    assert PASSWORD not in result.log
    [batch] = list((tmp_path / "scratch" / "site" / "workflows").glob("*/batch/*"))
    a, b = points(case.from_dicom), points(batch / "measure")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-3)
    assert json.loads((batch / "measure" / "measurements.json").read_text())["schema"] == "cardiofm.measurements/1"
    sr = pydicom.dcmread(batch / "export-dicom" / "sr.dcm")
    series = DicomWebSource(case.pacs.dicomweb, username=USER, password=PASSWORD).list_series(sr.StudyInstanceUID)
    assert sr.SeriesInstanceUID in {s.uid for s in series}
