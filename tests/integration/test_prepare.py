"""``prepare_site`` end to end on a synthetic federation, checked against its evaluation-only truth.

One federation per module (4 sites, one held out, 3 studies of 6 series each); every site is prepared
once. The pipeline never sees ``federation.json`` or ``ground_truth/``; these tests compare its
outputs with them: the chosen series, the landmarks, the calcification masks, the crop geometry,
the counts, and the absence of patient identifiers. A copy of one site is then broken on purpose
(truncated and incomplete series, stray files, an MR image, a corrupt annotation).

Study size: 96² × 80 slices. The ``tiny`` preset (64² × 40) does not work: its 5.6 mm slices fail the
3 mm thickness rule, and even with 80 slices a 64² matrix is too coarse for the blood-pool contrast
check (every main series measured < 180 HU), so nothing would be selected.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from scipy import ndimage

from cardiofm.constants import LANDMARK_NAMES, MASK_TASKS, TASK_LANDMARKS
from cardiofm.contracts.dataset import CaseRecord, DatasetManifest, ManifestCase
from cardiofm.contracts.federation import FederationRecord, SiteRecord, StudyRecord
from cardiofm.dicom.index import file_key
from cardiofm.imaging.nifti import load_nifti, read_grid
from cardiofm.imaging.resample import resample_onto
from cardiofm.labels.formats import read_landmarks_json
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.phantoms.scanners import StudySize
from cardiofm.pipeline.case_steps import converted_image, load_site_config
from cardiofm.pipeline.prepare import PrepareResult, case_id_for, prepare_site

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SETTINGS = FederationSettings(
    sites=4, cases_per_site=3, seed=5, size=StudySize("t", 96, 80), series_per_study=6, held_out_sites=1
)
#: Landmarks are written with full float precision by every site format; allow float round-off only.
LANDMARK_TOL_MM = 1e-3


@dataclass
class Prepared:
    """One site's prepare run."""

    site: SiteRecord
    site_dir: Path
    out: Path
    result: PrepareResult
    manifest: DatasetManifest

    def study(self, case: ManifestCase) -> StudyRecord:
        return next(s for s in self.site.studies if s.study_uid == case.source.study_uid)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FederationRecord]:
    root = tmp_path_factory.mktemp("federation")
    record = generate_federation(root, SETTINGS)
    assert FederationRecord.model_validate_json((root / "federation.json").read_text()) == record
    return root, record


@pytest.fixture(scope="module")
def prepared(
    federation: tuple[Path, FederationRecord], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Prepared]:
    root, record = federation
    outs = tmp_path_factory.mktemp("prepared")
    runs: dict[str, Prepared] = {}
    for site in record.sites:
        out = outs / site.folder
        result = prepare_site(root / site.folder, out)
        manifest = DatasetManifest.model_validate_json((out / "manifest.json").read_text())
        runs[site.site_id] = Prepared(site, root / site.folder, out, result, manifest)
    return runs


SITE_IDS = [f"site-{n + 1:02d}" for n in range(SETTINGS.sites)]


def expected_landmarks(study: StudyRecord) -> list[str]:
    return [n for t in study.tasks_labelled for n in TASK_LANDMARKS.get(t, ())]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def patient_identifiers(site_dir: Path) -> dict[str, set[str]]:
    """Study UID → the PatientID, PatientName (and its parts) and AccessionNumber in its DICOM headers."""
    found: dict[str, set[str]] = {}
    for path in sorted((site_dir / "pacs").rglob("*")):
        if not path.is_file():
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ids = found.setdefault(str(ds.StudyInstanceUID), set())
        name = str(ds.PatientName)
        ids.update({str(ds.PatientID), name, *name.split("^"), str(ds.AccessionNumber)})
    return {uid: {i for i in ids if len(i) >= 4} for uid, ids in found.items()}


# --- the generated federation is what these tests assume ------------------------------------------


def test_federation_shape(federation: tuple[Path, FederationRecord]) -> None:
    _, record = federation
    assert [s.site_id for s in record.sites] == SITE_IDS
    assert [s.held_out for s in record.sites] == [False, False, False, True]
    assert all(len(s.studies) == 3 for s in record.sites)
    assert all(len(st.series) == 6 and st.correct_series_uid for s in record.sites for st in s.studies)
    assert any(st.tasks_labelled for s in record.sites for st in s.studies)
    # the first site also labels the downstream coronary arteries (FederationSettings.coronary_sites)
    assert any("coronaries" in st.tasks_labelled for st in record.sites[0].studies)


# --- (a) series selection ---------------------------------------------------------------------------


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_chosen_series_is_the_correct_one(prepared: dict[str, Prepared], site_id: str) -> None:
    run = prepared[site_id]
    selection = json.loads((run.out / "selection.json").read_text())
    chosen = {s["study_uid"]: s["chosen_series_uid"] for s in selection["studies"]}
    truth = {s.study_uid: s.correct_series_uid for s in run.site.studies}
    assert chosen == truth
    assert {c.source.study_uid: c.source.series_uid for c in run.manifest.cases} == truth


# --- (b) counts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_counts_balance(prepared: dict[str, Prepared], site_id: str) -> None:
    run = prepared[site_id]
    n = len(run.site.studies)
    assert run.result.balanced
    assert run.result.studies_in == n
    assert run.result.prepared == n == len(run.manifest.cases)
    assert run.result.quarantined == []
    summary = json.loads((run.out / "prepare-summary.json").read_text())
    assert (summary["in"], summary["prepared"], summary["quarantined"]) == (n, n, 0)
    assert json.loads((run.out / "quarantine.json").read_text()) == []
    for step in summary["steps"]:
        assert step["in"] == step["done"] == n, step
    expected_ids = sorted(case_id_for(site_id, s.study_uid) for s in run.site.studies)
    assert [c.case_id for c in run.manifest.cases] == expected_ids
    assert sorted(p.name for p in (run.out / "cases").iterdir()) == expected_ids


# --- (c) labels and geometry against the ground truth ----------------------------------------------


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_tasks_and_landmarks_match_ground_truth(
    prepared: dict[str, Prepared], federation: tuple[Path, FederationRecord], site_id: str
) -> None:
    root, _ = federation
    run = prepared[site_id]
    for case in run.manifest.cases:
        study = run.study(case)
        assert case.tasks == study.tasks_labelled, case.case_id
        names = expected_landmarks(study)
        assert case.landmarks == names
        path = run.out / "cases" / case.case_id / "labels" / "landmarks.json"
        got = read_landmarks_json(path) if path.is_file() else {}
        assert list(got) == names
        truth = read_landmarks_json(root / "ground_truth" / study.case_id / "landmarks.json")
        for name in names:
            np.testing.assert_allclose(got[name], truth[name], atol=LANDMARK_TOL_MM, err_msg=f"{case.case_id} {name}")
        record = CaseRecord.model_validate_json((run.out / "cases" / case.case_id / "case.json").read_text())
        assert record.label_problems == []
        if run.site.held_out:
            assert not names
            assert not path.exists()


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_crop_geometry_keeps_every_landmark(
    prepared: dict[str, Prepared], federation: tuple[Path, FederationRecord], site_id: str
) -> None:
    """Every ground-truth landmark (labelled or not) lands on the same anatomy after convert and crop.

    1. The converted NIfTI has the lattice of the DICOM series (the ground truth's grid): each corner
       voxel centre of the truth grid is a voxel centre of the converted grid.
    2. Each landmark lies inside the crop; its nearest crop voxel holds the trilinear HU of the
       converted image at that voxel's centre. The crop is ``rint`` of exactly that interpolation, so
       the only allowed difference is int16 rounding: 0.5 HU. A crop affine off by even a fraction of
       a voxel would show as tens of HU at these high-gradient points (valve hinges, ostia).
    """
    root, _ = federation
    run = prepared[site_id]
    for case in run.manifest.cases:
        study = run.study(case)
        truth_grid = read_grid(root / "ground_truth" / study.case_id / "heart.nii.gz")
        conv, conv_grid = load_nifti(converted_image(run.out / "work" / "batch" / case.case_id / "convert"))
        conv_hu = np.asarray(conv, dtype=np.float32)
        assert conv_hu.size == int(np.prod(truth_grid.shape))
        corners = conv_grid.lps_to_index(truth_grid.corners_lps())
        np.testing.assert_allclose(corners, np.rint(corners), atol=1e-2)
        assert all(conv_grid.contains_index(c) for c in corners)

        crop, crop_grid = load_nifti(run.out / "cases" / case.case_id / "image.nii.gz")
        assert crop_grid.shape == tuple(case.shape)
        np.testing.assert_allclose(crop_grid.spacing_mm, case.spacing_mm)
        np.testing.assert_allclose(crop_grid.spacing_mm, (1.0, 1.0, 1.0), atol=1e-5)
        truth = read_landmarks_json(root / "ground_truth" / study.case_id / "landmarks.json")
        assert set(truth) == set(LANDMARK_NAMES)
        for name, point in truth.items():
            ijk = crop_grid.lps_to_index(point)
            assert crop_grid.contains_index(ijk), f"{case.case_id}: {name} outside the crop"
            np.testing.assert_allclose(crop_grid.index_to_lps(ijk), point, atol=1e-6)
            voxel = np.rint(ijk).astype(int)
            assert np.all(np.abs(ijk - voxel) <= 0.5)
            centre = crop_grid.index_to_lps(voxel)
            src = conv_grid.lps_to_index(centre).reshape(3, 1)
            expected = ndimage.map_coordinates(conv_hu, src, order=1, mode="nearest")[0]
            got = float(np.asarray(crop)[tuple(voxel)])
            assert abs(got - expected) <= 0.5 + 1e-3, f"{case.case_id} {name}: crop {got} vs original {expected}"


@pytest.mark.parametrize("task", MASK_TASKS)
@pytest.mark.parametrize("site_id", SITE_IDS)
def test_mask_labels_match_ground_truth(
    prepared: dict[str, Prepared], federation: tuple[Path, FederationRecord], site_id: str, task: str
) -> None:
    root, _ = federation
    run = prepared[site_id]
    held = [c.case_id for c in run.manifest.cases if task in c.tasks]
    assert held == [c.case_id for c in run.manifest.cases if task in run.study(c).tasks_labelled]
    for case in run.manifest.cases:
        study = run.study(case)
        path = run.out / "cases" / case.case_id / "labels" / f"{task}.nii.gz"
        if task not in study.tasks_labelled:
            assert not path.exists(), case.case_id
            continue
        got, grid = load_nifti(path)
        truth, truth_grid = load_nifti(root / "ground_truth" / study.case_id / f"{task}.nii.gz")
        on_crop = resample_onto((np.asarray(truth) > 0).astype(np.uint8), truth_grid, grid, order=0, fill_value=0)
        assert dice(np.asarray(got), on_crop) > 0.9, case.case_id
        # the label is the site mask resampled nearest-neighbour onto the crop grid, voxel for voxel
        assert int((np.asarray(got) > 0).sum()) == int(on_crop.sum())


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_dataset_holds_no_patient_identifiers(prepared: dict[str, Prepared], site_id: str) -> None:
    run = prepared[site_id]
    identifiers = patient_identifiers(run.site_dir)
    assert set(identifiers) == {s.study_uid for s in run.site.studies}
    every = set().union(*identifiers.values())
    assert {s.patient_id for s in run.site.studies} <= every
    texts = {"manifest.json": (run.out / "manifest.json").read_text()}
    for case in run.manifest.cases:
        case_dir = run.out / "cases" / case.case_id
        texts[f"{case.case_id}/case.json"] = (case_dir / "case.json").read_text()
        for image in case_dir.rglob("*.nii.gz"):
            header = nib.load(image).header
            texts[str(image.relative_to(run.out))] = " ".join(
                str(header[k].item()) for k in ("descrip", "aux_file", "intent_name", "db_name")
            )
    for where, text in texts.items():
        for ident in every:
            assert ident not in text, f"{where} contains a patient identifier"
    # the dataset folder holds the image, heart mask, labels and provenance only
    for case in run.manifest.cases:
        files = sorted(
            str(p.relative_to(run.out / "cases" / case.case_id))
            for p in (run.out / "cases" / case.case_id).rglob("*")
            if p.is_file()
        )
        assert set(files) <= {
            "case.json",
            "image.nii.gz",
            "heart.nii.gz",
            "labels/landmarks.json",
            "labels/calcification.nii.gz",
            "labels/coronaries.nii.gz",
        }


def test_rerun_is_deterministic_and_keeps_the_split(prepared: dict[str, Prepared], tmp_path: Path) -> None:
    run = prepared["site-02"]
    out = tmp_path / "again"
    shutil.copytree(run.out, out)
    # another seed and fraction: a new case would be split by them, earlier cases keep their split
    result = prepare_site(run.site_dir, out, split_seed=12345, test_fraction=0.9)
    again = DatasetManifest.model_validate_json((out / "manifest.json").read_text())
    assert [c.case_id for c in again.cases] == [c.case_id for c in run.manifest.cases]
    assert {c.case_id: c.split for c in again.cases} == {c.case_id: c.split for c in run.manifest.cases}
    assert [c.source for c in again.cases] == [c.source for c in run.manifest.cases]
    assert [(c.tasks, c.landmarks, c.shape) for c in again.cases] == [
        (c.tasks, c.landmarks, c.shape) for c in run.manifest.cases
    ]
    assert result.prepared == run.result.prepared
    for case in run.manifest.cases:
        a, _ = load_nifti(run.out / "cases" / case.case_id / "image.nii.gz")
        b, _ = load_nifti(out / "cases" / case.case_id / "image.nii.gz")
        np.testing.assert_array_equal(a, b)
        labels = run.out / "cases" / case.case_id / "labels" / "landmarks.json"
        if labels.is_file():
            assert labels.read_text() == (out / "cases" / case.case_id / "labels" / "landmarks.json").read_text()


# --- (d) a broken copy of a site -------------------------------------------------------------------


@dataclass
class Broken:
    """What was broken in the copy, and the prepare run over it."""

    site: SiteRecord
    out: Path
    result: PrepareResult
    truncated: StudyRecord
    missing_slice: StudyRecord
    bad_labels: StudyRecord
    mr_study_uid: str
    unknown_id: str
    duplicate_of: str
    truncated_files: list[Path]


def _series_files(pacs: Path, series_uid: str) -> list[tuple[float, Path]]:
    """(z position, path) of every file of a series, sorted by z."""
    out = []
    for path in pacs.rglob("*"):
        if not path.is_file():
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "ImagePositionPatient"])
        if str(ds.SeriesInstanceUID) == series_uid:
            out.append((float(ds.ImagePositionPatient[2]), path))
    return sorted(out)


def _corrupt_annotation(site_dir: Path, study: StudyRecord, key: str) -> tuple[str, str, str]:
    """Give RCO an id the label map lacks and LCO the id of LCC; returns (unknown id, LCC's label, format)."""
    spec = load_site_config(site_dir / "site.yaml").annotations.landmarks
    assert spec is not None
    assert spec.format in ("mps", "mrk.json")
    site_label = {canonical: label for label, canonical in reversed(list(spec.label_map.items()))}
    path = site_dir / spec.path / spec.file_pattern.format(key=key)
    unknown = "99" if spec.format == "mps" else "aortic annulus centre"
    assert unknown not in spec.label_map
    if spec.format == "mps":
        tree = ET.parse(path)
        ids = tree.getroot().iter("id")
        for el in ids:
            if el.text == site_label["RCO"]:
                el.text = unknown
            elif el.text == site_label["LCO"]:
                el.text = site_label["LCC"]
        tree.write(path, encoding="UTF-8", xml_declaration=True)
    else:
        doc = json.loads(path.read_text())
        for point in doc["markups"][0]["controlPoints"]:
            if point["label"] == site_label["RCO"]:
                point["label"] = unknown
            elif point["label"] == site_label["LCO"]:
                point["label"] = site_label["LCC"]
        path.write_text(json.dumps(doc))
    return unknown, site_label["LCC"], spec.format


@pytest.fixture(scope="module")
def broken(federation: tuple[Path, FederationRecord], tmp_path_factory: pytest.TempPathFactory) -> Broken:
    root, record = federation
    site = record.sites[0]
    work = tmp_path_factory.mktemp("broken")
    site_dir = work / site.folder
    shutil.copytree(root / site.folder, site_dir, symlinks=False)
    pacs = site_dir / "pacs"

    labelled = [s for s in site.studies if "landmarks" in s.tasks_labelled]
    assert labelled, "the broken site needs a study with labelled hinge points and ostia"
    bad_labels = labelled[0]
    truncated, missing_slice = (s for s in site.studies if s is not bad_labels)

    # every file of one study's correct series cut to half its bytes
    files = _series_files(pacs, str(truncated.correct_series_uid))
    for _, path in files:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    donor = _series_files(pacs, str(bad_labels.series[1].series_uid))[0][1]
    # a middle slice of another study's correct series deleted
    slices = _series_files(pacs, str(missing_slice.correct_series_uid))
    slices[len(slices) // 2][1].unlink()
    # stray files: text, random bytes named .dcm, and an MR image of a study of its own
    (pacs / "README.txt").write_text("exported by the PACS admin, do not delete\n")
    (pacs / "junk.dcm").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    mr = pydicom.dcmread(donor)
    mr.Modality = "MR"
    mr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    mr.file_meta.MediaStorageSOPClassUID = mr.SOPClassUID
    mr.StudyInstanceUID, mr.SeriesInstanceUID = generate_uid(), generate_uid()
    mr.SOPInstanceUID = mr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    (pacs / "mr").mkdir()
    mr.save_as(pacs / "mr" / "mr0001.dcm")

    key_ds = pydicom.dcmread(donor, stop_before_pixels=True)
    match_by = load_site_config(site_dir / "site.yaml").annotations.match_by
    unknown, duplicate_of, _ = _corrupt_annotation(site_dir, bad_labels, str(key_ds.get(match_by)))

    out = work / "out"
    result = prepare_site(site_dir, out)
    return Broken(
        site,
        out,
        result,
        truncated,
        missing_slice,
        bad_labels,
        str(mr.StudyInstanceUID),
        unknown,
        duplicate_of,
        [path for _, path in files],
    )


def _quarantine(broken: Broken) -> list[dict[str, str]]:
    return json.loads((broken.out / "quarantine.json").read_text())


def test_broken_site_counts_balance(broken: Broken) -> None:
    r = broken.result
    assert r.studies_in == 4  # three studies and the MR image's
    assert r.prepared == 1
    assert r.balanced
    studies_q = [q for q in _quarantine(broken) if q["kind"] == "study"]
    assert len(studies_q) == 3
    assert r.studies_in == r.prepared + len(studies_q)
    summary = json.loads((broken.out / "prepare-summary.json").read_text())
    assert (summary["in"], summary["prepared"], summary["quarantined"]) == (4, 1, 3)
    assert summary["unreadable_files"] == len(broken.truncated_files)


def test_truncated_series_is_not_replaced_by_a_distractor(broken: Broken) -> None:
    quarantine = _quarantine(broken)
    study = broken.truncated
    entry = next(q for q in quarantine if q["kind"] == "study" and q["item"] == study.study_uid)
    assert entry["step"] == "select-series"
    assert "no series fit for TAVI planning" in entry["reason"]
    selection = {s["study_uid"]: s for s in json.loads((broken.out / "selection.json").read_text())["studies"]}
    assert selection[study.study_uid]["chosen_series_uid"] is None
    assert study.correct_series_uid not in {c["uid"] for c in selection[study.study_uid]["candidates"]}
    files = [q for q in quarantine if q["kind"] == "file"]
    assert len(files) == len(broken.truncated_files)
    assert all(q["step"] == "index" and "truncated" in q["reason"] for q in files)


def test_reports_name_no_patient(broken: Broken, federation: tuple[Path, FederationRecord]) -> None:
    """Unreadable files are listed by the hashed key the index logs them under: paths may name patients."""
    root, _ = federation
    identifiers = set().union(*patient_identifiers(root / broken.site.folder).values())
    for report in ("quarantine.json", "selection.json", "prepare-summary.json", "manifest.json"):
        text = (broken.out / report).read_text()
        for ident in identifiers:
            assert ident not in text, f"{report} contains a patient identifier"
    pacs = broken.out.parent / broken.site.folder / "pacs"
    files = [q["item"] for q in _quarantine(broken) if q["kind"] == "file"]
    assert sorted(files) == sorted(file_key(pacs, path) for path in broken.truncated_files)


def test_series_with_a_missing_slice_is_rejected_with_its_reason(broken: Broken) -> None:
    study = broken.missing_slice
    entry = next(q for q in _quarantine(broken) if q["kind"] == "study" and q["item"] == study.study_uid)
    assert entry["step"] == "select-series"
    selection = {s["study_uid"]: s for s in json.loads((broken.out / "selection.json").read_text())["studies"]}
    assert selection[study.study_uid]["chosen_series_uid"] is None
    candidate = next(c for c in selection[study.study_uid]["candidates"] if c["uid"] == study.correct_series_uid)
    assert not candidate["accepted"]
    assert any("irregular slice spacing" in r and "gap" in r for r in candidate["reasons"]), candidate["reasons"]
    # the quarantine reason itself names the gap, not only the nearest distractor
    assert "gap" in entry["reason"], entry["reason"]


def test_mr_image_is_quarantined_as_a_study(broken: Broken) -> None:
    entry = next(q for q in _quarantine(broken) if q["kind"] == "study" and q["item"] == broken.mr_study_uid)
    assert entry["step"] == "select-series"
    assert "modality MR is not CT" in entry["reason"]


def test_corrupt_annotation_keeps_the_case_and_reports_each_problem(
    broken: Broken, federation: tuple[Path, FederationRecord]
) -> None:
    root, _ = federation
    manifest = DatasetManifest.model_validate_json((broken.out / "manifest.json").read_text())
    (case,) = manifest.cases
    study = broken.bad_labels
    assert case.source.study_uid == study.study_uid
    assert case.source.series_uid == study.correct_series_uid
    record = CaseRecord.model_validate_json((broken.out / "cases" / case.case_id / "case.json").read_text())
    problems = " | ".join(record.label_problems)
    assert f"'{broken.unknown_id}' is not in the site label map" in problems
    assert "LCC is annotated 2 times" in problems
    assert len(record.label_problems) == 3  # the unknown id and both LCC entries
    import_labels = next(s for s in record.steps if s.step == "import-labels")
    assert any(broken.unknown_id in n for n in import_labels.notes)

    got = read_landmarks_json(broken.out / "cases" / case.case_id / "labels" / "landmarks.json")
    kept = [n for n in expected_landmarks(study) if n not in ("RCO", "LCO", "LCC")]
    assert list(got) == kept
    truth = read_landmarks_json(root / "ground_truth" / study.case_id / "landmarks.json")
    for name in kept:
        np.testing.assert_allclose(got[name], truth[name], atol=LANDMARK_TOL_MM)
    assert case.landmarks == kept
    assert "landmarks" not in case.tasks  # incomplete now
    assert list(case.tasks) == [t for t in study.tasks_labelled if t != "landmarks"]
