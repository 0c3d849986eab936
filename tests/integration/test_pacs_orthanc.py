"""PACS sources against a real Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``).

One Orthanc per session, on free localhost ports, with HTTP authentication, the DICOMweb plugin and
the test's AE titles registered; it holds a tiny two-site phantom federation (4 studies × 6 series).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from orthanc_pacs import PASSWORD, USER, Pacs, free_port, running_orthanc

from cardiofm.dicom.pacs import (
    DicomWebSource,
    DimseSource,
    MirrorResult,
    PacsSource,
    RemoteSeries,
    mirror_all,
    mirror_study,
)
from cardiofm.errors import ConfigError, ExternalToolError, InputDataError
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.phantoms.scanners import StudySize

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    root = tmp_path_factory.mktemp("orthanc")
    with running_orthanc(root) as pacs:
        fed = root / "federation"
        generate_federation(
            fed, FederationSettings(sites=2, cases_per_site=2, size=StudySize.preset("tiny"), series_per_study=6)
        )
        pacs.upload(sorted(fed.glob("site-*/pacs/**/*.dcm")))
        yield pacs


def _web(pacs: Pacs, password: str = PASSWORD) -> DicomWebSource:
    return DicomWebSource(pacs.dicomweb, USER, password, timeout_s=10)


def _dimse(pacs: Pacs, mode: str, calling_ae: str = "CARDIOFM") -> DimseSource:
    return DimseSource(
        "127.0.0.1",
        pacs.dicom_port,
        "ORTHANC",
        calling_ae=calling_ae,
        mode="c-get" if mode == "c-get" else "c-move",
        move_destination_ae="CFMSTORE",
        local_port=pacs.move_port,
        local_address="127.0.0.1",
        timeout_s=10,
    )


def _check_mirror(pacs: Pacs, result: MirrorResult, min_instances: int) -> None:
    """The mirror holds exactly the CT series with >= min_instances instances, byte-equal in pixels and UIDs."""
    original = pacs.studies[result.study_uid]
    expected = {uid for uid, sops in original.items() if len(sops) >= min_instances}
    assert {m.series.uid for m in result.mirrored} == expected
    assert {s.series.uid for s in result.skipped} == set(original) - expected
    for m in result.mirrored:
        files = sorted(m.folder.iterdir())
        assert all(re.fullmatch(r"\d{5}\.dcm", f.name) for f in files)
        got = {}
        for f in files:
            ds = pydicom.dcmread(f)
            assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (result.study_uid, m.series.uid)
            got[ds.SOPInstanceUID] = ds.PixelData
        assert got == original[m.series.uid]
        assert m.n_files == len(files)
    assert not list(result.out_dir.glob(".partial-*"))


@pytest.mark.parametrize("min_instances", [1, 2])
def test_dicomweb_mirror_all(
    orthanc: Pacs, tmp_path: Path, min_instances: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cardiofm")
    source = _web(orthanc)
    assert sorted(source.list_studies()) == sorted(orthanc.studies)
    result = mirror_all(source, tmp_path, min_instances=min_instances)
    assert (len(result.studies), result.failed) == (len(orthanc.studies), ())
    for study in result.studies:
        _check_mirror(orthanc, study, min_instances)
        if min_instances == 2:  # the localizer (1 instance) is skipped on metadata
            assert [s.reason for s in study.skipped] == ["1 instance(s), fewer than min_instances=2"]
            assert study.skipped[0].series.n_instances == 1
    assert not any(uid in str(p) for p in tmp_path.rglob("*") for uid in orthanc.identifiers)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("cardiofm"))
    assert "4 of 4 studies" in ours
    assert not any(text in ours for text in orthanc.identifiers)


@pytest.mark.parametrize("mode", ["c-get", "c-move"])
def test_dimse_mirror_study(orthanc: Pacs, tmp_path: Path, mode: str) -> None:
    source = _dimse(orthanc, mode)
    assert sorted(source.list_studies()) == sorted(orthanc.studies)
    study_uid = sorted(orthanc.studies)[0]
    series = source.list_series(study_uid)
    assert all(isinstance(s, RemoteSeries) and s.modality == "CT" and s.n_instances for s in series)
    result = mirror_study(source, study_uid, tmp_path / "study", min_instances=2)
    _check_mirror(orthanc, result, 2)
    assert "fewer than min_instances=2" in result.skipped[0].reason


def test_wrong_password_mentions_credentials(orthanc: Pacs) -> None:
    with pytest.raises(ExternalToolError, match="credentials") as info:
        _web(orthanc, password="wrong").list_studies()
    assert "wrong" not in str(info.value)


def test_unreachable_port_names_host_and_port(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(ExternalToolError, match=f"127.0.0.1:{port}"):
        DicomWebSource(f"http://127.0.0.1:{port}/dicom-web", USER, PASSWORD, timeout_s=2).list_studies()
    with pytest.raises(ExternalToolError, match=rf"127.0.0.1:{port}.*registered"):
        DimseSource("127.0.0.1", port, "ORTHANC", timeout_s=2).list_studies()


def test_unregistered_calling_ae_is_named(orthanc: Pacs) -> None:
    with pytest.raises(ExternalToolError, match=r"STRANGER.*registered"):
        _dimse(orthanc, "c-get", calling_ae="STRANGER").list_studies()


@pytest.mark.parametrize("kind", ["dicomweb", "c-get"])
def test_unknown_study_is_a_clear_error(orthanc: Pacs, tmp_path: Path, kind: str) -> None:
    source: PacsSource = _web(orthanc) if kind == "dicomweb" else _dimse(orthanc, kind)
    with pytest.raises(InputDataError, match="not found"):
        mirror_study(source, "1.2.826.0.1.3680043.8.498.999", tmp_path)


class _Faulty:
    """A source listing one unknown study and failing on one real study's second series (bad series UID)."""

    def __init__(self, inner: DicomWebSource, broken_study: str) -> None:
        self.inner, self.broken_study = inner, broken_study

    @property
    def where(self) -> str:
        return self.inner.where

    def list_studies(self, modality: str = "CT") -> list[str]:
        return [*self.inner.list_studies(modality), "1.2.826.0.1.3680043.8.498.12345"]

    def list_series(self, study_uid: str) -> list[RemoteSeries]:
        series = self.inner.list_series(study_uid)
        if study_uid == self.broken_study:
            series = sorted(series, key=lambda s: -(s.n_instances or 0))
            series[1] = RemoteSeries("1.2.826.0.1.3680043.8.498.777", "CT", "gone", 99, 10)
        return series

    def fetch_series(self, study_uid: str, series_uid: str, out_dir: Path) -> list[Path]:
        return self.inner.fetch_series(study_uid, series_uid, out_dir)


def test_mirror_all_isolates_failing_studies(orthanc: Pacs, tmp_path: Path) -> None:
    broken = sorted(orthanc.studies)[1]
    result = mirror_all(_Faulty(_web(orthanc), broken), tmp_path, min_instances=2)
    assert result.n_listed == len(orthanc.studies) + 1 == len(result.studies) + len(result.failed)
    reasons = {f.study_uid: f.reason for f in result.failed}
    assert set(reasons) == {broken, "1.2.826.0.1.3680043.8.498.12345"}
    assert "HTTP 404" in reasons[broken]
    assert "not found" in reasons["1.2.826.0.1.3680043.8.498.12345"]
    for study in result.studies:
        _check_mirror(orthanc, study, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(s.out_dir.name for s in result.studies)


def test_invalid_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="local_port"):
        DimseSource("127.0.0.1", 104, "ORTHANC", mode="c-move")
    with pytest.raises(ConfigError, match="http"):
        DicomWebSource("ftp://pacs/dicom-web")
    with pytest.raises(ConfigError, match="both"):
        DicomWebSource("http://pacs/dicom-web", username="u")


@pytest.mark.slow
def test_prepare_reads_a_site_from_dicomweb(orthanc: Pacs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole chain on a site whose studies live only in the PACS: same choices as from the folder."""
    from cardiofm.contracts.federation import FederationRecord
    from cardiofm.contracts.pacs import PacsParams
    from cardiofm.pipeline.prepare import prepare_site

    fed = tmp_path / "fed"
    record: FederationRecord = generate_federation(
        fed, FederationSettings(sites=1, cases_per_site=2, seed=21, size=StudySize("t", 96, 80), held_out_sites=0)
    )
    site_dir = fed / "site-01"
    with requests.Session() as session:
        session.auth = (USER, PASSWORD)
        for path in sorted(site_dir.glob("pacs/**/*.dcm")):
            session.post(f"{orthanc.http}/instances", data=path.read_bytes(), timeout=10).raise_for_status()
    shutil.rmtree(site_dir / "pacs")  # the site folder now holds only site.yaml and annotations

    monkeypatch.setenv("CARDIOFM_TEST_PACS_PASSWORD", PASSWORD)
    pacs = PacsParams(dicomweb_url=orthanc.dicomweb, pacs_user=USER, pacs_password_env="CARDIOFM_TEST_PACS_PASSWORD")
    result = prepare_site(site_dir, tmp_path / "out", pacs=pacs)

    assert result.manifest is not None
    chosen = {c.source.study_uid: c.source.series_uid for c in result.manifest.cases}
    for study in record.sites[0].studies:
        assert chosen[study.study_uid] == study.correct_series_uid
    # the PACS also holds the session's tiny studies: listed, and quarantined with a reason
    assert result.studies_in == len(orthanc.studies) + len(record.sites[0].studies)
    assert result.balanced
    tiny = [q for q in result.quarantined if q["item"] in orthanc.studies]
    assert len(tiny) == len(orthanc.studies)
    assert all(q["step"] == "select-series" and "no series fit" in q["reason"] for q in tiny)
    labelled = {s.study_uid for s in record.sites[0].studies if "landmarks" in s.tasks_labelled}
    for case in result.manifest.cases:
        assert ("landmarks" in case.tasks) == (case.source.study_uid in labelled)
