"""``cardiofm send`` against a real Orthanc: a CT series, its SEG and SR, over STOW-RS and over C-STORE.

The console script sends the files; Orthanc's REST API gives back what it stored, which must equal what was
sent, field for field (pixel data included). A wrong password, an unreachable PACS or a missing password
variable must give a clear message and the exit code of its error class, without patient identifiers.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from orthanc_pacs import PASSWORD, USER, Pacs, free_port, running_orthanc

from cardiofm.contracts.measurements import Measurement, MeasurementReport, ModelInfo, PredictedLandmarks
from cardiofm.errors import CardioFMError, ConfigError, ExternalToolError
from cardiofm.exports import write_seg, write_sr
from cardiofm.imaging.geometry import Grid
from cardiofm.phantoms.dicom_writer import PatientInfo, SeriesInfo, StudyInfo, write_ct_series

pytestmark = pytest.mark.integration

CARDIOFM = str(Path(sys.executable).parent / "cardiofm")
PASSWORD_ENV = "TEST_PACS_PASSWORD"
PATIENT = PatientInfo(patient_id="S02-P0815", patient_name="SITE02^PATIENT0815", sex="F", age_years=79)
STUDY = StudyInfo(
    study_uid="1.2.826.0.1.3680043.8.498.400",
    study_id="815",
    accession_number="ACC0815",
    description="CTA heart (synthetic)",
    date="20240306",
    time="091500",
    institution_name="Synthetic Site 02",
)
SERIES = SeriesInfo(
    series_uid="1.2.826.0.1.3680043.8.498.401",
    frame_of_reference_uid="1.2.826.0.1.3680043.8.498.402",
    series_number=3,
    description="CTA 75%",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    slice_thickness_mm=1.0,
    convolution_kernel="Bv40",
    contrast_agent=None,
    cardiac_phase_percent=75.0,
    kvp=100.0,
    manufacturer="CardioFM Synthetic",
    manufacturer_model="Phantom CT 1",
)
MODEL = ModelInfo(name="cardiofm-student", version="1.2.0", sha256="fedcba9876543210" * 4)
#: What no output of cardiofm may contain.
IDENTIFIERS = (PATIENT.patient_id, PATIENT.patient_name, STUDY.accession_number, STUDY.study_uid, SERIES.series_uid)


@dataclass(frozen=True)
class Exports:
    series_dir: Path
    seg: Path
    sr: Path
    broken: Path  # a CT instance without SeriesInstanceUID, which Orthanc refuses to store

    @property
    def files(self) -> list[Path]:
        return [*sorted(self.series_dir.iterdir()), self.seg, self.sr]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as pacs:
        yield pacs


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    """A feet-first 12 x 10 x 5 series, a SEG of a small mask on it and an SR of two landmarks."""
    root = tmp_path_factory.mktemp("exports")
    grid = Grid((12, 10, 5), (0.7, 0.8, 1.0), (-4.0, 12.5, 30.0), ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)))
    mask = np.zeros(grid.shape, dtype=np.uint8)
    mask[2:6, 3, 1] = mask[8, 2:7, 3] = 1
    files = write_ct_series(np.where(mask > 0, 900.0, 0.0), grid, PATIENT, STUDY, SERIES, root / "series")
    datasets = [pydicom.dcmread(f) for f in files]
    seg = write_seg(root / "seg.dcm", mask, grid, datasets, model=MODEL)
    landmarks = PredictedLandmarks(points={"RCC": (1.0, 14.0, 31.0), "LCC": (-2.0, 17.5, 32.5)}, model=MODEL)
    report = MeasurementReport(
        measurements=[Measurement(name="calcium_volume_mm3", group="calcium", unit="mm3", value=5.6)]
    )
    write_sr(root / "sr.dcm", landmarks, report, datasets, seg)
    broken = copy.deepcopy(datasets[0])
    del broken.SeriesInstanceUID
    broken.save_as(root / "broken.dcm", enforce_file_format=True)
    return Exports(root / "series", root / "seg.dcm", root / "sr.dcm", root / "broken.dcm")


@pytest.fixture
def empty(orthanc: Pacs) -> Pacs:
    """The Orthanc with every study deleted."""
    for study in requests.get(f"{orthanc.http}/studies", auth=orthanc.auth, timeout=10).json():
        requests.delete(f"{orthanc.http}/studies/{study}", auth=orthanc.auth, timeout=10).raise_for_status()
    return orthanc


def send(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    return subprocess.run(
        [CARDIOFM, "send", *args],
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def stored(pacs: Pacs) -> dict[str, pydicom.Dataset]:
    """Every instance Orthanc holds, as it stored it, by SOPInstanceUID."""
    found: dict[str, pydicom.Dataset] = {}
    for instance in requests.get(f"{pacs.http}/instances", auth=pacs.auth, timeout=10).json():
        data = requests.get(f"{pacs.http}/instances/{instance}/file", auth=pacs.auth, timeout=10)
        data.raise_for_status()
        ds = pydicom.dcmread(io.BytesIO(data.content))
        found[str(ds.SOPInstanceUID)] = ds
    return found


def check_stored(pacs: Pacs, exports: Exports, run: subprocess.CompletedProcess[str]) -> None:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert f"stored {len(exports.files)} instance(s) of 3 series" in run.stdout
    assert not any(text in run.stdout + run.stderr for text in IDENTIFIERS)
    got = stored(pacs)
    sent = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in exports.files)}
    assert set(got) == set(sent)
    for uid, original in sent.items():
        assert got[uid] == original, f"{original.Modality} instance differs after the round trip"
        if "PixelData" in original:
            assert got[uid].PixelData == original.PixelData
    seg = hd.seg.Segmentation.from_dataset(got[str(pydicom.dcmread(exports.seg).SOPInstanceUID)])
    assert np.array_equal(seg.pixel_array, hd.seg.segread(exports.seg).pixel_array)
    sr = hd.sr.Comprehensive3DSR.from_dataset(got[str(pydicom.dcmread(exports.sr).SOPInstanceUID)])
    assert isinstance(sr.content, hd.sr.MeasurementReport)
    assert [g.tracking_identifier for g in sr.content.get_planar_roi_measurement_groups()] == ["RCC", "LCC"]


def test_send_over_stow_rs(empty: Pacs, exports: Exports) -> None:
    run = send(
        str(exports.series_dir),
        str(exports.seg),
        str(exports.sr),
        "--dicomweb-url",
        empty.dicomweb,
        "--pacs-user",
        USER,
        "--pacs-password-env",
        PASSWORD_ENV,
        env={PASSWORD_ENV: PASSWORD},
    )
    check_stored(empty, exports, run)


def test_send_over_c_store(empty: Pacs, exports: Exports) -> None:
    run = send(
        str(exports.series_dir),
        str(exports.seg),
        str(exports.sr),
        "--dimse",
        f"127.0.0.1:{empty.dicom_port}",
        "--called-ae",
        "ORTHANC",
        "--calling-ae",
        "CARDIOFM",
    )
    check_stored(empty, exports, run)


def test_failures_are_clear_and_leak_nothing(orthanc: Pacs, exports: Exports) -> None:
    wrong = "not-the-secret-4711"
    web = ["--dicomweb-url", orthanc.dicomweb, "--pacs-user", USER, "--pacs-password-env", PASSWORD_ENV]
    port = free_port()
    dimse = ["--dimse", f"127.0.0.1:{orthanc.dicom_port}"]
    cases: list[tuple[list[str], dict[str, str], type[CardioFMError], str]] = [
        (web, {PASSWORD_ENV: wrong}, ExternalToolError, "refused the credentials"),
        (web, {PASSWORD_ENV: PASSWORD}, ExternalToolError, "rejected instances"),
        (dimse, {}, ExternalToolError, "rejected instance 1 of 1 (CT Image Storage"),
        (web, {}, ConfigError, f"environment variable {PASSWORD_ENV}"),
        (["--dicomweb-url", f"http://127.0.0.1:{port}/dicom-web"], {}, ExternalToolError, "cannot reach"),
        (["--dimse", f"127.0.0.1:{port}"], {}, ExternalToolError, "could not be reached"),
        ([], {}, ConfigError, "--dicomweb-url"),
    ]
    for args, env, error, message in cases:
        run = send(str(exports.broken if "rejected" in message else exports.sr), *args, env=env)
        assert run.returncode == error.exit_code, f"{args}: exit {run.returncode}\n{run.stderr[-2000:]}"
        assert message in run.stderr, run.stderr[-2000:]
        assert wrong not in run.stdout + run.stderr
        assert not any(text in run.stdout + run.stderr for text in IDENTIFIERS)
