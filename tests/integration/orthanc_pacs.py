"""A real Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``) on free localhost ports, for tests.

:func:`running_orthanc` starts one with the DICOMweb plugin, the test AE titles registered (``CARDIOFM``
and ``CFMSTORE`` at ``move_port`` for C-MOVE) and, unless ``auth=False``, HTTP basic authentication;
:meth:`Pacs.upload` stores DICOM files in it and remembers their pixels and identifiers.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import requests

USER, PASSWORD = "cardiofm", "test-secret"
PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so.1.7"),
)
MAKE_DEPS = "run `make deps` (installs the Debian packages orthanc and orthanc-dicomweb)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pacs:
    http: str
    dicom_port: int
    move_port: int
    auth: tuple[str, str] | None
    #: study uid -> series uid -> {SOPInstanceUID: PixelData} of the uploaded originals
    studies: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)
    #: patient names and ids, study and series UIDs: none may appear in cardiofm's logs
    identifiers: set[str] = field(default_factory=set)
    #: PatientID, PatientName and AccessionNumber of every uploaded study: none may appear in a prepare tree
    patient_identifiers: set[str] = field(default_factory=set)

    @property
    def dicomweb(self) -> str:
        return f"{self.http}/dicom-web"

    def upload(self, paths: Iterable[Path]) -> None:
        studies: dict[str, dict[str, dict[str, bytes]]] = defaultdict(lambda: defaultdict(dict))
        for uid, series in self.studies.items():
            studies[uid].update(series)
        with requests.Session() as session:
            session.auth = self.auth
            for path in paths:
                session.post(f"{self.http}/instances", data=path.read_bytes(), timeout=10).raise_for_status()
                ds = pydicom.dcmread(path)
                studies[ds.StudyInstanceUID][ds.SeriesInstanceUID][ds.SOPInstanceUID] = ds.PixelData
                self.identifiers |= {str(ds.PatientName), ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID}
                self.patient_identifiers |= {str(ds.PatientName), ds.PatientID, ds.AccessionNumber} - {""}
        self.studies = {k: dict(v) for k, v in studies.items()}


def _wait(proc: subprocess.Popen[bytes], log: Path, http: str, auth: tuple[str, str] | None) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Orthanc exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(f"{http}/system", auth=auth, timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    pytest.fail(f"Orthanc did not answer /system within 20 s:\n{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def running_orthanc(root: Path, *, auth: bool = True) -> Iterator[Pacs]:
    """An empty Orthanc storing under ``root``; stopped on exit."""
    exe = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).is_file()), None)
    if exe is None:
        pytest.fail(f"the Orthanc binary is not installed: {MAKE_DEPS}")
    plugin = next((p for p in PLUGIN_CANDIDATES if p.is_file()), None)
    if plugin is None:
        pytest.fail(f"the Orthanc DICOMweb plugin is not installed: {MAKE_DEPS}")
    http_port, dicom_port, move_port = free_port(), free_port(), free_port()
    config = {
        "Name": "cardiofm-test",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": auth,
        "RegisteredUsers": {USER: PASSWORD} if auth else {},
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {
            "cardiofm": ["CARDIOFM", "127.0.0.1", move_port],
            "cfmstore": ["CFMSTORE", "127.0.0.1", move_port],
        },
        "SaveJobs": False,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "orthanc.json").write_text(json.dumps(config))
    http = f"http://127.0.0.1:{http_port}"
    credentials = (USER, PASSWORD) if auth else None
    log = root / "orthanc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, str(root / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(proc, log, http, credentials)
        yield Pacs(http, dicom_port, move_port, credentials)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
