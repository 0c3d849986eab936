"""Series selection on synthetic federations: the right series per study, every distractor rejected for its kind."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pydantic
import pydicom
import pytest
import yaml
from pydicom.uid import UID, generate_uid

from cardiofm.contracts.federation import FederationRecord, SiteRecord, StudyRecord
from cardiofm.contracts.selection import SelectionReport, SeriesRules
from cardiofm.contracts.site import SiteConfig
from cardiofm.dicom.index import SeriesIndex, file_key, index_folder
from cardiofm.dicom.selection import contrast_tag, phase_distance, phase_of, select_all
from cardiofm.errors import InputDataError
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.phantoms.scanners import StudySize

SEEDS = (5, 11)
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: Tiny phantoms have 40 slices over ~150-195 mm: the main series is 4.75-6.1 mm thick, the calcium-score
#: series 9.5-12.2 mm and the thick one 11.4-14.6 mm, so the 3 mm default (right for real data) would
#: reject every series; 8 mm separates them. Everything else stays at its default.
TINY_MAX_THICKNESS_MM = 8.0
#: Which reasons count as rejecting a distractor "for its kind".
KIND_REASONS = {
    "localizer": r"contains LOCALIZER|slices? < ",
    "calcium-score": r"contrast|description matches excluded",
    "other-phase": r"cardiac phase .* is not the preferred",
    "thick": r"slice thickness .* allowed",
    "mpr": r"image type .* lacks ORIGINAL|not axial",
}


class _Federations:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.cache: dict[int, FederationRecord] = {}

    def get(self, seed: int) -> tuple[Path, FederationRecord]:
        root = self.base / f"seed{seed}"
        if seed not in self.cache:
            settings = FederationSettings(
                sites=4, cases_per_site=2, seed=seed, size=StudySize.preset("tiny"), series_per_study=6
            )
            self.cache[seed] = generate_federation(root, settings)
        return root, self.cache[seed]


@pytest.fixture(scope="module")
def federations(tmp_path_factory: pytest.TempPathFactory) -> _Federations:
    return _Federations(tmp_path_factory.mktemp("federations"))


def site_rules(root: Path, site: SiteRecord, **overrides: object) -> SeriesRules:
    cfg = SiteConfig.model_validate(yaml.safe_load((root / site.folder / "site.yaml").read_text()))
    assert cfg.preferred_phase_percent is not None
    base = SeriesRules.model_validate({"max_slice_thickness_mm": TINY_MAX_THICKNESS_MM, **overrides})
    return base.for_site(cfg)


def site_where(fed: FederationRecord, *, contrast_tag: bool) -> SiteRecord:
    return next(s for s in fed.sites if s.scanner_profile["contrast_tag"] is contrast_tag)


def copy_study(root: Path, site: SiteRecord, study: StudyRecord, dest: Path) -> Path:
    """Copy one study (its patient folder: one study per patient) to ``dest/pacs``; returns that folder."""
    shutil.copytree(root / site.folder / "pacs" / study.patient_id, dest / "pacs" / "case")
    return dest / "pacs"


def files_of(folder: Path, series_uid: str) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*.dcm")
        if pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).SeriesInstanceUID
        == series_uid
    )


def series_of_kind(study: StudyRecord, kind: str) -> str:
    return next(s.series_uid for s in study.series if s.kind == kind)


@pytest.mark.parametrize("seed", SEEDS)
def test_chooses_the_correct_series_in_every_study(federations: _Federations, seed: int) -> None:
    root, fed = federations.get(seed)
    studies_checked = 0
    for site in fed.sites:
        report = select_all(root / site.folder / "pacs", site_rules(root, site))
        truth = {st.study_uid: st for st in site.studies}
        assert {s.study_uid for s in report.studies} == set(truth)
        assert report.problems == []
        for selection in report.studies:
            study = truth[selection.study_uid]
            assert selection.chosen_series_uid == study.correct_series_uid, (site.site_id, selection)
            assert selection.reason_if_none is None
            kinds = {s.series_uid: s.kind for s in study.series}
            assert {c.uid for c in selection.candidates} == set(kinds)
            for cand in selection.candidates:
                kind = kinds[cand.uid]
                if kind == "main":
                    assert cand.accepted
                    assert cand.reasons == []
                    assert cand.contrast_hu is not None
                    assert cand.contrast_hu >= 180.0
                    assert cand.slices == next(s.slices for s in study.series if s.kind == "main")
                    continue
                assert not cand.accepted, (site.site_id, kind, cand)
                assert any(re.search(KIND_REASONS[kind], r) for r in cand.reasons), (site.site_id, kind, cand.reasons)
            studies_checked += 1
        # The report is plain JSON and names no patient.
        text = report.model_dump_json()
        assert SelectionReport.model_validate_json(text) == report
        for study in site.studies:
            assert study.patient_id not in text
    assert studies_checked == 8


def test_bad_files_mixed_in_are_reported_and_do_not_change_the_choice(
    federations: _Federations, tmp_path: Path
) -> None:
    root, fed = federations.get(SEEDS[0])
    site = site_where(fed, contrast_tag=False)  # the flat layout: every series of a study in one folder
    study = site.studies[0]
    pacs = copy_study(root, site, study, tmp_path)
    folder = pacs / "case"
    main_files = files_of(folder, str(study.correct_series_uid))
    data = main_files[0].read_bytes()
    (folder / "header_cut.dcm").write_bytes(data[:600])  # cut inside the header
    (folder / "pixels_cut").write_bytes(data[:-100])  # cut inside the pixel data, no suffix
    (folder / "notes.txt").write_text("scanned on the new scanner\n")
    (folder / "thumbs.db").write_bytes(b"\x00" * 300)
    mr = pydicom.dcmread(main_files[len(main_files) // 2])
    mr.Modality, mr.SOPClassUID = "MR", MR_IMAGE_STORAGE
    mr.file_meta.MediaStorageSOPClassUID = UID(MR_IMAGE_STORAGE)
    mr.SeriesInstanceUID = mr_uid = str(generate_uid())
    mr.SOPInstanceUID = mr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    mr.save_as(folder / "mr.dcm", enforce_file_format=True)
    shutil.copy(main_files[1], folder / "copy_of_a_slice.dcm")

    report = select_all(pacs, site_rules(root, site))

    (selection,) = report.studies
    assert selection.chosen_series_uid == study.correct_series_uid
    main = next(c for c in selection.candidates if c.uid == study.correct_series_uid)
    assert main.slices == len(main_files)
    mr_cand = next(c for c in selection.candidates if c.uid == mr_uid)
    assert not mr_cand.accepted
    assert "modality MR is not CT" in mr_cand.reasons
    assert report.ignored_files == 2
    problems = {p.file_key: p.problem for p in report.problems}
    assert set(problems) == {
        file_key(pacs, folder / name) for name in ("header_cut.dcm", "pixels_cut", "copy_of_a_slice.dcm")
    }
    assert "truncated" in problems[file_key(pacs, folder / "header_cut.dcm")]
    assert "truncated" in problems[file_key(pacs, folder / "pixels_cut")]
    assert "duplicate" in problems[file_key(pacs, folder / "copy_of_a_slice.dcm")]
    assert "header_cut" not in report.model_dump_json()  # file keys, never paths


def test_study_without_its_main_series_yields_no_choice(federations: _Federations, tmp_path: Path) -> None:
    root, fed = federations.get(SEEDS[0])
    site = site_where(fed, contrast_tag=True)
    study = site.studies[1]
    pacs = copy_study(root, site, study, tmp_path)
    for path in files_of(pacs, str(study.correct_series_uid)):
        path.unlink()

    (selection,) = select_all(pacs, site_rules(root, site)).studies

    assert selection.chosen_series_uid is None
    assert selection.reason_if_none is not None
    assert selection.reason_if_none.startswith("none of the 5 series passed the rules")
    assert all(not c.accepted and c.reasons for c in selection.candidates)


def test_missing_slice_in_the_main_series_is_a_gap(federations: _Federations, tmp_path: Path) -> None:
    root, fed = federations.get(SEEDS[0])
    site = site_where(fed, contrast_tag=True)
    study = site.studies[0]
    pacs = copy_study(root, site, study, tmp_path)
    index = index_folder(pacs)
    (main,) = [s for st in index.studies for s in st.series if s.series_uid == study.correct_series_uid]
    main.files[len(main.files) // 2].unlink()

    (selection,) = select_all(pacs, site_rules(root, site)).studies

    assert selection.chosen_series_uid is None
    cand = next(c for c in selection.candidates if c.uid == study.correct_series_uid)
    assert any(r.startswith("irregular slice spacing") for r in cand.reasons), cand.reasons


def test_contrast_from_hu_at_a_site_without_contrast_tag(federations: _Federations) -> None:
    root, fed = federations.get(SEEDS[0])
    site = site_where(fed, contrast_tag=False)
    pacs = root / site.folder / "pacs"
    # Header rules loosened so that the native calcium-score series reaches the pixel check.
    loose: dict[str, object] = {"max_slice_thickness_mm": None, "description_exclude": [], "min_slices": 1}
    report = select_all(pacs, site_rules(root, site, **loose))
    for selection in report.studies:
        study = next(st for st in site.studies if st.study_uid == selection.study_uid)
        by_uid = {c.uid: c for c in selection.candidates}
        assert all(c.contrast_tag is None for c in selection.candidates)
        assert selection.chosen_series_uid == study.correct_series_uid
        calcium = by_uid[series_of_kind(study, "calcium-score")]
        assert calcium.contrast_hu is not None
        assert calcium.contrast_hu < 120.0
        assert calcium.reasons
        assert calcium.reasons[0].startswith("no contrast: blood-pool estimate")
        thick = by_uid[series_of_kind(study, "thick")]
        assert thick.accepted  # same phase and contrast: lost only on the "thinnest" tie-breaker
        assert by_uid[str(study.correct_series_uid)].contrast_hu is not None

    any_contrast = select_all(pacs, site_rules(root, site, contrast="any", **loose))
    for selection in any_contrast.studies:
        study = next(st for st in site.studies if st.study_uid == selection.study_uid)
        assert all(c.contrast_hu is None for c in selection.candidates)  # no pixels read
        calcium = next(c for c in selection.candidates if c.uid == series_of_kind(study, "calcium-score"))
        assert calcium.accepted
        assert selection.chosen_series_uid == study.correct_series_uid  # nearer phase, then thinner

    impossible = select_all(pacs, site_rules(root, site, contrast_min_hu=5000.0))
    assert all(s.chosen_series_uid is None for s in impossible.studies)


def test_pixels_overrule_a_wrong_contrast_tag(federations: _Federations, tmp_path: Path) -> None:
    root, fed = federations.get(SEEDS[0])
    site = site_where(fed, contrast_tag=True)
    study = site.studies[0]
    pacs = copy_study(root, site, study, tmp_path)
    calcium_uid = series_of_kind(study, "calcium-score")
    for path in files_of(pacs, calcium_uid):
        ds = pydicom.dcmread(path)
        ds.ContrastBolusAgent = "Iomeprol 400"
        ds.save_as(path)
    rules = site_rules(root, site, max_slice_thickness_mm=None, description_exclude=[], phase_tolerance_percent=50)

    (selection,) = select_all(pacs, rules).studies

    calcium = next(c for c in selection.candidates if c.uid == calcium_uid)
    assert calcium.contrast_tag is True
    assert not calcium.accepted
    assert any("overrule ContrastBolusAgent" in r for r in calcium.reasons), calcium.reasons
    assert selection.chosen_series_uid == study.correct_series_uid


def test_without_preferred_phase_nothing_is_rejected_by_phase_and_systole_ranks_first(
    federations: _Federations,
) -> None:
    root, fed = federations.get(SEEDS[0])
    site = next(s for s in fed.sites if s.scanner_profile["preferred_phase_percent"] == 75)
    rules = SeriesRules(max_slice_thickness_mm=TINY_MAX_THICKNESS_MM)  # no preferred phase
    report = select_all(root / site.folder / "pacs", rules)
    for selection in report.studies:
        study = next(st for st in site.studies if st.study_uid == selection.study_uid)
        other = series_of_kind(study, "other-phase")  # 35-40 %, nearer mid-systole than the main 75 %
        assert not any("cardiac phase" in r for c in selection.candidates for r in c.reasons)
        assert selection.chosen_series_uid == other


def test_rules_contract() -> None:
    rules = SeriesRules()
    assert rules.max_slice_thickness_mm == 3.0
    assert rules.min_slices == 16
    assert rules.contrast == "required"
    assert "score" in rules.description_exclude
    assert json.loads(rules.model_dump_json())["require_image_type"] == ["ORIGINAL", "PRIMARY"]
    site = SiteConfig(site_id="site-01", preferred_phase_percent=75)
    assert rules.for_site(site).preferred_phase_percent == 75
    assert SeriesRules(preferred_phase_percent=40).for_site(site).preferred_phase_percent == 40
    with pytest.raises(pydantic.ValidationError, match="invalid regular expression"):
        SeriesRules(description_exclude=["(unclosed"])
    with pytest.raises(pydantic.ValidationError):
        SeriesRules.model_validate({"max_thickness": 2.0})
    with pytest.raises(pydantic.ValidationError):
        SeriesRules(prefer=["thinnest", "thinnest"])
    with pytest.raises(pydantic.ValidationError):
        rules.min_slices = 3  # type: ignore[misc]


def test_contract_imports_without_numpy_or_pydicom() -> None:
    code = (
        "import sys, cardiofm.contracts.selection; "
        "bad = [m for m in ('numpy', 'pydicom', 'scipy') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _series(**changes: object) -> SeriesIndex:
    base: dict[str, object] = {
        "study_uid": "1.2.3",
        "series_uid": "1.2.3.4",
        "modality": "CT",
        "description": "",
        "number": 1,
        "image_type": ("ORIGINAL", "PRIMARY", "AXIAL"),
        "slice_thickness_mm": 0.6,
        "orientation": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        "pixel_spacing_mm": (0.4, 0.4),
        "rows": 512,
        "columns": 512,
        "frames": 1,
        "phase_percent": None,
        "trigger_time_ms": None,
        "heart_rate_bpm": None,
        "contrast_agent": None,
        "kernel": "Bv36",
        "files": (),
        "positions_mm": (),
    }
    return SeriesIndex(**{**base, **changes})  # type: ignore[arg-type]


def test_phase_and_contrast_tag_helpers() -> None:
    assert phase_distance(5, 95) == pytest.approx(10)
    assert phase_distance(40, 75) == pytest.approx(35)
    assert phase_of(_series(phase_percent=75.0, description="Cardiac 40%")) == 75.0
    assert phase_of(_series(trigger_time_ms=300.0, heart_rate_bpm=80.0)) == pytest.approx(40.0)
    assert phase_of(_series(description="TAVI_Herz_0.6_Bv36_40%")) == 40.0
    assert phase_of(_series(description="Heart 0,5 CE 72,5 %")) == 72.5
    assert phase_of(_series(description="Recon 2: Cardiac 0.6mm")) is None
    assert contrast_tag(None) is None
    assert contrast_tag("  ") is None
    assert contrast_tag("none") is False
    assert contrast_tag("Iomeprol 400") is True


def test_missing_or_empty_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="does not exist"):
        select_all(tmp_path / "nowhere", SeriesRules())
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(InputDataError, match="no DICOM study"):
        select_all(tmp_path, SeriesRules())
