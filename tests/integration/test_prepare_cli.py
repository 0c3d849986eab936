"""``cardiofm prepare`` as a clinic admin runs it: the real console script against a real Orthanc.

One synthetic site is prepared from its folder, then, from a copy of the site folder without
``pacs/``, from Orthanc over DICOMweb (with and without credentials) and over DIMSE (C-GET and
C-MOVE): every run must give the same dataset. Every file each run writes, and its log, is searched
for the patients' ids, names and accession numbers.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from orthanc_pacs import PASSWORD, USER, Pacs, free_port, running_orthanc

from cardiofm.contracts.dataset import DatasetManifest
from cardiofm.contracts.federation import FederationRecord
from cardiofm.errors import ConfigError, ExternalToolError
from cardiofm.imaging.nifti import load_nifti
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.phantoms.scanners import StudySize
from cardiofm.pipeline.dag_runner import LocalAirflow, run_dag

pytestmark = pytest.mark.integration

CARDIOFM = str(Path(sys.executable).parent / "cardiofm")
PASSWORD_ENV = "TEST_PACS_PASSWORD"


@dataclass
class Site:
    record: FederationRecord
    site_dir: Path  # with pacs/
    folderless: Path  # the same site without pacs/: site.yaml and annotations only
    folder_run: Path  # dataset prepared from the folder
    folder_log: str
    secure: Pacs  # Orthanc with HTTP authentication
    open: Pacs  # Orthanc without


def prepare(
    *args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CARDIOFM, "-v", "prepare", *args],
        env={k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def ok(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout + run.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("prepare-cli")
    settings = FederationSettings(
        sites=1, cases_per_site=3, seed=11, size=StudySize("t", 96, 80), series_per_study=4, held_out_sites=0
    )
    record = generate_federation(root / "fed", settings)
    site_dir = root / "fed" / record.sites[0].folder
    folderless = root / "folderless" / site_dir.name
    shutil.copytree(site_dir, folderless, ignore=shutil.ignore_patterns("pacs"))
    log = ok(prepare("--site-dir", str(site_dir), "--out", str(root / "from-folder")))
    with running_orthanc(root / "orthanc-auth") as secure, running_orthanc(root / "orthanc-open", auth=False) as open_:
        files = sorted(p for p in (site_dir / "pacs").rglob("*") if p.is_file())
        secure.upload(files)
        open_.upload(files)
        yield Site(record, site_dir, folderless, root / "from-folder", log, secure, open_)


def assert_same_dataset(a: Path, b: Path) -> None:
    """Same cases, splits, tasks, landmarks and chosen series; byte-equal images and labels."""
    ma = DatasetManifest.model_validate_json((a / "manifest.json").read_text())
    mb = DatasetManifest.model_validate_json((b / "manifest.json").read_text())
    assert ma.cases == mb.cases
    for case in ma.cases:
        for rel in ("image.nii.gz", "heart.nii.gz", "labels/landmarks.json", "labels/calcification.nii.gz"):
            fa, fb = a / "cases" / case.case_id / rel, b / "cases" / case.case_id / rel
            assert fa.is_file() == fb.is_file(), rel
            if fa.suffix == ".gz":
                (da, ga), (db, gb) = load_nifti(fa), load_nifti(fb)
                np.testing.assert_array_equal(np.asarray(da), np.asarray(db))
                assert ga == gb
            elif fa.is_file():
                assert fa.read_text() == fb.read_text()


def assert_no_patient_identifier(tree: Path, log: str, pacs: Pacs) -> None:
    """No file under ``tree`` (decompressed where gzip), no link target and no log line names a patient."""
    assert pacs.patient_identifiers
    needles = sorted(pacs.patient_identifiers)
    for path in tree.rglob("*"):
        if path.is_symlink():
            target = os.readlink(path)
            assert not any(n in target for n in needles), f"link {path.relative_to(tree)} names a patient"
            continue
        if not path.is_file():
            continue
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        found = [n for n in needles if n.encode() in data]
        assert not found, f"{path.relative_to(tree)} holds a patient identifier"
    assert not [n for n in needles if n in log], "the log names a patient"


def test_folder_run_chooses_the_correct_series(site: Site) -> None:
    manifest = DatasetManifest.model_validate_json((site.folder_run / "manifest.json").read_text())
    chosen = {c.source.study_uid: c.source.series_uid for c in manifest.cases}
    assert chosen == {s.study_uid: s.correct_series_uid for s in site.record.sites[0].studies}
    assert sum(c.split == "test" for c in manifest.cases) == 1  # round(0.2 × 3) = 1, at least one from 3


def test_folder_run_leaves_no_patient_identifier(site: Site) -> None:
    assert_no_patient_identifier(site.folder_run, site.folder_log, site.secure)
    assert not list(site.folder_run.rglob("*.dcm"))
    assert (site.site_dir / ".cardiofm" / "match.key").is_file()  # the secret stays in the site folder


@pytest.mark.parametrize("credentials", [True, False], ids=["user-password", "no-auth"])
def test_dicomweb_gives_the_folder_dataset(site: Site, tmp_path: Path, credentials: bool) -> None:
    pacs = site.secure if credentials else site.open
    args = ["--site-dir", str(site.folderless), "--out", str(tmp_path / "ds"), "--dicomweb-url", pacs.dicomweb]
    env = {}
    if credentials:
        args += ["--pacs-user", USER, "--pacs-password-env", PASSWORD_ENV]
        env[PASSWORD_ENV] = PASSWORD
    log = ok(prepare(*args, env=env))
    assert f"reading the studies from the PACS at {pacs.dicomweb}" in log
    assert PASSWORD not in log
    assert_same_dataset(site.folder_run, tmp_path / "ds")
    assert_no_patient_identifier(tmp_path / "ds", log, pacs)
    assert not (tmp_path / "ds" / "work" / "pacs-mirror").exists()  # the staged DICOM copy is gone


@pytest.mark.parametrize("mode", ["c-get", "c-move"])
def test_dimse_gives_the_folder_dataset(site: Site, tmp_path: Path, mode: str) -> None:
    pacs = site.secure
    args = [
        "--site-dir",
        str(site.folderless),
        "--out",
        str(tmp_path / "ds"),
        "--dimse",
        f"127.0.0.1:{pacs.dicom_port}",
    ]
    args += ["--called-ae", "ORTHANC", "--calling-ae", "CARDIOFM", "--dimse-mode", mode]
    if mode == "c-move":
        args += ["--move-ae", "CFMSTORE", "--move-port", str(pacs.move_port), "--listen-address", "127.0.0.1"]
    log = ok(prepare(*args))
    assert_same_dataset(site.folder_run, tmp_path / "ds")
    assert_no_patient_identifier(tmp_path / "ds", log, pacs)


def test_wrong_password_is_refused_with_a_clear_message(site: Site, tmp_path: Path) -> None:
    args = ["--site-dir", str(site.folderless), "--out", str(tmp_path / "ds"), "--dicomweb-url", site.secure.dicomweb]
    run = prepare(*args, "--pacs-user", USER, "--pacs-password-env", PASSWORD_ENV, env={PASSWORD_ENV: "wrong"})
    assert run.returncode == ExternalToolError.exit_code
    assert "refused the credentials" in run.stderr
    assert "wrong" not in run.stderr
    run = prepare(*args)  # an authenticating PACS, no user given
    assert run.returncode == ExternalToolError.exit_code
    assert "HTTP 401" in run.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dicomweb-url", "http://127.0.0.1:1/dicom-web", "--dimse", "127.0.0.1:104"], "not both"),
        (["--dimse", "pacs-without-port"], "HOST:PORT"),
        (["--dimse", "127.0.0.1:104", "--dimse-mode", "c-store"], "c-get or c-move"),
        (["--dimse", "127.0.0.1:104", "--dimse-mode", "c-move"], "needs --move-port"),
        (["--move-port", "11113"], "apply to --dimse"),
        (["--pacs-user", "u"], "--dicomweb-url only"),
        (["--dicomweb-url", "http://127.0.0.1:1/dicom-web", "--pacs-user", "u"], "CARDIOFM_PACS_PASSWORD"),
    ],
)
def test_contradictory_pacs_options_are_config_errors(
    site: Site, tmp_path: Path, extra: list[str], message: str
) -> None:
    run = prepare("--site-dir", str(site.folderless), "--out", str(tmp_path / "ds"), *extra)
    assert run.returncode == ConfigError.exit_code, run.stderr
    assert message in run.stderr
    assert not (tmp_path / "ds").exists()  # nothing was started


def test_folderless_site_without_a_pacs_option_says_how_to_read_the_pacs(site: Site, tmp_path: Path) -> None:
    run = prepare("--site-dir", str(site.folderless), "--out", str(tmp_path / "ds"))
    assert run.returncode == ConfigError.exit_code
    assert "--dicomweb-url or --dimse" in run.stderr


def test_unreachable_pacs_is_an_external_error(site: Site, tmp_path: Path) -> None:
    port = free_port()
    run = prepare("--site-dir", str(site.folderless), "--out", str(tmp_path / "ds"), "--dimse", f"127.0.0.1:{port}")
    assert run.returncode == ExternalToolError.exit_code
    assert f"127.0.0.1:{port}" in run.stderr


def test_preparation_settings_reach_the_dataset(site: Site, tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.yaml"  # a site.yaml kept outside the site folder
    shutil.copyfile(site.site_dir / "site.yaml", config)
    args = ["--site-dir", str(site.site_dir), "--out", str(tmp_path / "ds"), "--config", str(config)]
    args += ["--segmenter", "fallback", "--margin-mm", "8", "--spacing-mm", "2", "--split-seed", "7"]
    args += ["--test-fraction", "0.67"]
    ok(prepare(*args))
    manifest = DatasetManifest.model_validate_json((tmp_path / "ds" / "manifest.json").read_text())
    assert (manifest.split_seed, manifest.test_fraction) == (7, 0.67)
    assert sum(c.split == "test" for c in manifest.cases) == 2  # round(0.67 × 3)
    assert {c.spacing_mm for c in manifest.cases} == {(2.0, 2.0, 2.0)}
    crop = json.loads(next((tmp_path / "ds" / "work" / "batch").glob("*/crop-heart/crop.json")).read_text())
    assert (crop["margin_mm"], crop["segmenter"]) == (8.0, "fallback")
    assert (config.parent / ".cardiofm" / "match.key").is_file()  # the secret sits beside the config used


def test_totalsegmentator_without_weights_quarantines_every_study_and_says_why(site: Site, tmp_path: Path) -> None:
    segmenter_python = Path(__file__).resolve().parents[2] / ".venvs" / "segmenter" / "bin" / "python"
    args = ["--site-dir", str(site.site_dir), "--out", str(tmp_path / "ds"), "--segmenter", "totalsegmentator"]
    run = prepare(
        *args, "--segmenter-python", str(segmenter_python), unset=("TOTALSEG_HOME_DIR", "TOTALSEG_WEIGHTS_PATH")
    )
    summary = json.loads((tmp_path / "ds" / "prepare-summary.json").read_text())
    assert summary["in"] == 3
    assert summary["in"] == summary["prepared"] + summary["quarantined"]
    assert summary["quarantined"] == 3  # nothing lost: each study is listed with the reason
    reasons = [q["reason"] for q in json.loads((tmp_path / "ds" / "quarantine.json").read_text())]
    assert all("TOTALSEG_HOME_DIR" in r for r in reasons), reasons
    assert "TOTALSEG_HOME_DIR" in run.stdout + run.stderr


def test_a_teacher_on_the_prepared_site_is_scored_against_the_phantom_truth(site: Site, tmp_path: Path) -> None:
    ckpt = tmp_path / "teacher.pt"
    train = [CARDIOFM, "train", "--dataset", str(site.folder_run), "--task", "landmarks", "--out", str(ckpt)]
    train += ["--filters", "4,8,16,32", "--patch", "32", "--steps", "2", "--batch-size", "1", "--spacing-mm", "2"]
    ok(subprocess.run(train, capture_output=True, text=True, timeout=600, check=False))
    report = tmp_path / "report.json"
    fed_root = site.site_dir.parent
    evaluate = [CARDIOFM, "evaluate", "--checkpoint", str(ckpt), "--dataset", str(site.folder_run), "--split", "all"]
    evaluate += ["--phantom-truth", str(fed_root), "--json", str(report)]
    ok(subprocess.run(evaluate, capture_output=True, text=True, timeout=600, check=False))
    scored = json.loads(report.read_text())
    assert scored["cases"] == 3
    # every case is scored against the generator's truth, also those the site never labelled
    assert scored["landmarks"]["pooled"]["n"] == 3 * 5


#: Kaapana's Airflow (2.11, Python 3.12), built by `make airflow`; Airflow runs the DAG, the steps run here.
AIRFLOW_PYTHON = Path(__file__).resolve().parents[2] / ".venvs" / "airflow" / "bin" / "python"


def test_prepare_dag_on_the_local_backend_gives_the_folder_dataset(site: Site, tmp_path: Path) -> None:
    """What a clinic admin triggers: Airflow runs cardiofm-prepare against the PACS; the same dataset as the CLI."""
    form: dict[str, object] = {
        "site_config": str(site.folderless / "site.yaml"),
        "dataset_dir": str(tmp_path / "ds"),
        "dicomweb_url": site.secure.dicomweb,
        "pacs_user": USER,
        "pacs_password_env": PASSWORD_ENV,
        "segmenter": "fallback",
    }
    airflow = LocalAirflow(python=AIRFLOW_PYTHON, scratch=tmp_path / "scratch")
    result = run_dag(airflow, "cardiofm-prepare", form, name="site", env={PASSWORD_ENV: PASSWORD})
    assert set(result.tasks.values()) == {"success"}, result.tasks
    assert len(result.tasks) == 7
    assert_same_dataset(site.folder_run, tmp_path / "ds")
    summary = json.loads((tmp_path / "ds" / "prepare-summary.json").read_text())
    assert (summary["in"], summary["prepared"], summary["quarantined"]) == (3, 3, 0)
    assert PASSWORD not in result.log
    workflows = tmp_path / "scratch" / "site" / "workflows"
    assert len(list(workflows.iterdir())) == 1  # one run's workflow folder, as Kaapana's layout
    for tree in (tmp_path / "ds", workflows):
        assert_no_patient_identifier(tree, result.log, site.secure)
    assert not list(workflows.rglob("*.dcm"))  # mirror and DICOM links removed


def test_train_local_dag_trains_a_teacher_on_the_prepared_dataset(site: Site, tmp_path: Path) -> None:
    """The comparison baseline as an admin triggers it: the federated teacher's settings, this site's data alone."""
    from cardiofm.training.checkpoint import load_checkpoint

    run_config = {"spacing-mm": 3.0, "patch-size-vox": 32, "teacher-filters": "4,8,16,32", "batch-size": 1}
    form: dict[str, object] = {
        "dataset": str(site.folder_run),
        "task": "landmarks",
        "out": str(tmp_path / "teacher-landmarks.pt"),
        "steps": 2,
        "run_config": json.dumps(run_config),
    }
    airflow = LocalAirflow(python=AIRFLOW_PYTHON, scratch=tmp_path / "scratch")
    result = run_dag(airflow, "cardiofm-train-local", form, name="site", env={"OMP_NUM_THREADS": "1"})
    assert result.tasks == {"train-local": "success"}
    ckpt = load_checkpoint(tmp_path / "teacher-landmarks.pt")
    assert ckpt.model_config.name == "resunet-teacher"
    assert tuple(ckpt.model_config.filters) == (4, 8, 16, 32)
    assert ckpt.train_config.preprocessing.spacing_mm == 3.0
    assert ckpt.train_config.steps == 2
