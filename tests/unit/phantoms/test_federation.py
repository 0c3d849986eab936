"""Behaviour of a generated synthetic federation: record, DICOM PACS, site annotations, ground truth, dcm2niix."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset

from cardiofm.constants import CT_IMAGE_STORAGE_UID, HEART_LABELS, LANDMARK_NAMES, MASK_TASKS, TASK_LANDMARKS, TASKS
from cardiofm.contracts.federation import FederationRecord, SiteRecord, StudyRecord
from cardiofm.contracts.site import SiteConfig
from cardiofm.imaging.geometry import Grid, lps_to_ras, ras_to_lps
from cardiofm.imaging.nifti import load_nifti
from cardiofm.labels.formats import ImportResult, apply_label_map, import_annotation, read_csv, read_landmarks_json
from cardiofm.labels.labelmap import LabelMap
from cardiofm.phantoms.federation import FederationSettings, generate_federation, training_site_tasks
from cardiofm.phantoms.scanners import StudySize

SETTINGS = FederationSettings(
    sites=4, cases_per_site=2, seed=7, size=StudySize.preset("tiny"), series_per_study=6, held_out_sites=1
)
SITE_IDS = [f"site-{n + 1:02d}" for n in range(SETTINGS.sites)]
GT_MASKS = ("heart", "calcification", "coronaries")
AXIAL = ["ORIGINAL", "PRIMARY", "AXIAL"]
#: Heart label expected in the 3×3×3 neighbourhood of each landmark.
LANDMARK_STRUCTURE = dict.fromkeys(("RCC", "LCC", "NCC", "RCO", "LCO"), HEART_LABELS["aorta"]) | {
    "MS1": HEART_LABELS["left_ventricle"],
    "MS2": HEART_LABELS["left_ventricle"],
}


@dataclass(frozen=True)
class Federation:
    root: Path
    record: FederationRecord
    #: site id -> [(path, header without pixels)]
    headers: dict[str, list[tuple[Path, Dataset]]]

    def site(self, site_id: str) -> SiteRecord:
        (site,) = [s for s in self.record.sites if s.site_id == site_id]
        return site

    def config(self, site_id: str) -> SiteConfig:
        return SiteConfig.model_validate(yaml.safe_load((self.root / site_id / "site.yaml").read_text()))

    def series(self, site_id: str, series_uid: str) -> list[tuple[Path, Dataset]]:
        files = [(p, ds) for p, ds in self.headers[site_id] if ds.SeriesInstanceUID == series_uid]
        return sorted(files, key=lambda item: int(item[1].InstanceNumber))

    def study_header(self, site_id: str, study: StudyRecord) -> Dataset:
        return self.series(site_id, str(study.correct_series_uid))[0][1]


def _headers(site_dir: Path) -> list[tuple[Path, Dataset]]:
    return [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in sorted((site_dir / "pacs").rglob("*.dcm"))]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    root = tmp_path_factory.mktemp("federation")
    record = generate_federation(root, SETTINGS)
    return Federation(root, record, {s.site_id: _headers(root / s.folder) for s in record.sites})


def _grid_of_series(files: list[tuple[Path, Dataset]]) -> Grid:
    """Geometry of a series from its DICOM headers only (IPP of each slice, IOP, PixelSpacing)."""
    first, last = files[0][1], files[-1][1]
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    ipp0 = np.array([float(v) for v in first.ImagePositionPatient])
    n = len(files)
    step = (np.array([float(v) for v in last.ImagePositionPatient]) - ipp0) / max(n - 1, 1)
    dk = step / np.linalg.norm(step)
    direction = np.stack([iop[:3], iop[3:], dk], axis=1)
    return Grid(
        shape=(int(first.Columns), int(first.Rows), n),
        spacing_mm=(col_spacing, row_spacing, float(np.linalg.norm(step))),
        origin_lps_mm=(float(ipp0[0]), float(ipp0[1]), float(ipp0[2])),
        direction=tuple(tuple(float(v) for v in row) for row in direction),
    )


def _assert_same_grid(actual: Grid, expected: Grid) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual.spacing_mm, expected.spacing_mm, rtol=1e-6)
    np.testing.assert_allclose(actual.origin_lps_mm, expected.origin_lps_mm, atol=1e-3)
    np.testing.assert_allclose(actual.direction_matrix, expected.direction_matrix, atol=1e-6)


def _hu_volume(files: list[tuple[Path, Dataset]]) -> npt.NDArray[np.float64]:
    slices = []
    for path, _ in files:
        ds = pydicom.dcmread(path)
        slices.append(ds.pixel_array.T.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    return np.stack(slices, axis=2)


def _studies(fed: Federation) -> Iterator[tuple[SiteRecord, StudyRecord]]:
    for site in fed.record.sites:
        for study in site.studies:
            yield site, study


def _expected_landmarks(study: StudyRecord) -> list[str]:
    names = {n for t in study.tasks_labelled for n in TASK_LANDMARKS.get(t, ())}
    return [n for n in LANDMARK_NAMES if n in names]


# --- federation.json and tasks ------------------------------------------------------------------------------


def test_federation_json_parses_and_matches_record(fed: Federation) -> None:
    parsed = FederationRecord.model_validate_json((fed.root / "federation.json").read_text())
    assert parsed == fed.record
    assert [s.site_id for s in parsed.sites] == SITE_IDS
    assert parsed.seed == SETTINGS.seed
    assert parsed.series_per_study == SETTINGS.series_per_study
    assert all(len(s.studies) == SETTINGS.cases_per_site for s in parsed.sites)
    case_ids = [st.case_id for _, st in _studies(fed)]
    assert len(set(case_ids)) == len(case_ids)


def test_site_tasks_follow_training_plan(fed: Federation) -> None:
    training = [s for s in fed.record.sites if not s.held_out]
    assert [s.held_out for s in fed.record.sites] == [False, False, False, True]
    for t, site in enumerate(training):
        coronaries = ["coronaries"] if t in SETTINGS.coronary_sites else []
        assert site.tasks == training_site_tasks(t) + coronaries, site.site_id
        assert site.annotation_format is not None
    for site in fed.record.sites:
        if site.held_out:
            assert site.tasks == []
            assert site.annotation_format is None
        for study in site.studies:
            assert set(study.tasks_labelled) <= set(site.tasks), study.case_id
    for task in TASKS:
        assert any(task in s.tasks for s in training), f"no training site holds {task}"


# --- DICOM PACS --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_dicom_files_are_pseudonymous_ct(fed: Federation, site_id: str) -> None:
    site = fed.site(site_id)
    by_patient = {st.patient_id: st for st in site.studies}
    assert fed.headers[site_id], "site PACS holds files"
    for path, ds in fed.headers[site_id]:
        assert ds.Modality == "CT", path.name
        assert ds.SOPClassUID == CT_IMAGE_STORAGE_UID
        assert ds.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE_UID
        assert not ds.get("PatientBirthDate"), "no birth date may be written"
        assert ds.PatientID in by_patient
        expected_name = f"{site_id.upper().replace('-', '')}^{ds.PatientID.replace('-', '')}"
        assert str(ds.PatientName) == expected_name
        assert ds.StudyInstanceUID == by_patient[ds.PatientID].study_uid
    sop_uids = [ds.SOPInstanceUID for _, ds in fed.headers[site_id]]
    assert len(set(sop_uids)) == len(sop_uids)


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_study_series_match_record(fed: Federation, site_id: str) -> None:
    site = fed.site(site_id)
    layout = site.scanner_profile["layout"]
    files_by_study: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, ds in fed.headers[site_id]:
        files_by_study[ds.StudyInstanceUID].append((path, ds))
    assert set(files_by_study) == {st.study_uid for st in site.studies}
    for study in site.studies:
        files = files_by_study[study.study_uid]
        assert {ds.PatientID for _, ds in files} == {study.patient_id}
        assert len({ds.AccessionNumber for _, ds in files}) == 1
        counts: dict[str, int] = defaultdict(int)
        folders: dict[str, set[Path]] = defaultdict(set)
        for path, ds in files:
            counts[ds.SeriesInstanceUID] += 1
            folders[ds.SeriesInstanceUID].add(path.parent)
        assert dict(counts) == {s.series_uid: s.slices for s in study.series}
        assert len(study.series) == SETTINGS.series_per_study
        assert [s.series_uid for s in study.series].count(study.correct_series_uid) == 1
        assert all(len(f) == 1 for f in folders.values()), "each series lies in one folder"
        distinct_folders = {next(iter(f)) for f in folders.values()}
        if layout == "flat":
            assert len(distinct_folders) == 1, "flat layout: all series of a study in one folder"
        else:
            assert len(distinct_folders) == len(study.series), "nested layout: one folder per series"


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_correct_series_is_found_by_header_rules(fed: Federation, site_id: str) -> None:
    site = fed.site(site_id)
    profile = site.scanner_profile
    preferred = fed.config(site_id).preferred_phase_percent
    assert preferred == profile["preferred_phase_percent"]
    for study in site.studies:
        kinds = {s.series_uid: s.kind for s in study.series}
        first = {uid: fed.series(site_id, uid)[0][1] for uid in kinds}
        main = first[str(study.correct_series_uid)]
        assert kinds[str(study.correct_series_uid)] == "main"
        assert list(main.ImageType) == AXIAL
        assert main.PatientPosition == profile["orientation"]
        assert f"{preferred}%" in main.SeriesDescription
        if profile["contrast_tag"]:
            assert main.get("ContrastBolusAgent"), "contrast agent tagged at this site"
        else:
            assert "ContrastBolusAgent" not in main

        def candidate(ds: Dataset) -> bool:
            if list(ds.ImageType) != AXIAL or "NominalPercentageOfCardiacPhase" not in ds:
                return False
            if float(ds.NominalPercentageOfCardiacPhase) != preferred:
                return False
            return not profile["contrast_tag"] or bool(ds.get("ContrastBolusAgent"))

        candidates = {uid: float(ds.SliceThickness) for uid, ds in first.items() if candidate(ds)}
        thinnest = min(candidates.values())
        assert [uid for uid, thk in candidates.items() if thk == thinnest] == [study.correct_series_uid]
        assert len(candidates) >= 2, "the thick reconstruction is a distractor at the same phase"
        for uid, kind in kinds.items():
            ds = first[uid]
            if kind == "calcium-score":
                assert "ContrastBolusAgent" not in ds
                assert float(ds.NominalPercentageOfCardiacPhase) != preferred
            elif kind == "localizer":
                assert "LOCALIZER" in list(ds.ImageType)
                assert len(fed.series(site_id, uid)) == 1, "a localizer is a single image"
            elif kind == "mpr":
                assert ds.ImageType[0] == "DERIVED"
            elif kind == "other-phase":
                assert float(ds.NominalPercentageOfCardiacPhase) != preferred
                assert float(ds.SliceThickness) == float(main.SliceThickness)


def test_site_profiles_cover_every_orientation(fed: Federation) -> None:
    orientations = {s.scanner_profile["orientation"] for s in fed.record.sites}
    assert orientations == {"HFS", "FFS", "HFP"}
    assert {s.scanner_profile["layout"] for s in fed.record.sites} == {"flat", "nested"}


# --- annotations -------------------------------------------------------------------------------------------


def _import_landmarks(fed: Federation, site_id: str, study: StudyRecord) -> ImportResult | None:
    """Find and import a study's landmark annotation the way a site admin configured it; None if absent."""
    cfg = fed.config(site_id)
    spec = cfg.annotations.landmarks
    assert spec is not None
    header = fed.study_header(site_id, study)
    key = str(getattr(header, cfg.annotations.match_by))
    label_map = LabelMap(aliases=spec.label_map)
    site_dir = fed.root / site_id
    if spec.format == "csv":
        assert spec.csv is not None
        table = read_csv(site_dir / spec.path, spec.csv)
        return apply_label_map(table[key], label_map) if key in table else None
    path = site_dir / spec.path / spec.file_pattern.format(key=key)
    return import_annotation(path, label_map) if path.exists() else None


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_landmark_annotations_round_trip(fed: Federation, site_id: str) -> None:
    site = fed.site(site_id)
    spec = fed.config(site_id).annotations.landmarks
    wants_landmarks = any(t in TASK_LANDMARKS for t in site.tasks)
    assert (spec is not None) == wants_landmarks
    if spec is None:
        return
    site_dir = fed.root / site_id
    for study in site.studies:
        expected = _expected_landmarks(study)
        result = _import_landmarks(fed, site_id, study)
        if not expected:
            assert result is None, f"{study.case_id} is not labelled for landmarks but has an annotation"
            continue
        assert result is not None, f"{study.case_id}: annotation not found"
        assert result.problems == []
        assert list(result.points) == expected
        truth = read_landmarks_json(fed.root / "ground_truth" / study.case_id / "landmarks.json")
        for name in expected:
            np.testing.assert_allclose(result.points[name], truth[name], atol=1e-3, err_msg=name)
    if spec.format != "csv":
        written = {p.name for p in (site_dir / spec.path).iterdir()} if (site_dir / spec.path).exists() else set()
        labelled = [st for st in site.studies if _expected_landmarks(st)]
        assert len(written) == len(labelled), "one file per landmark-labelled study, nothing else"


@pytest.mark.parametrize("task", MASK_TASKS)
@pytest.mark.parametrize("site_id", SITE_IDS)
def test_mask_annotations_match_ground_truth(fed: Federation, site_id: str, task: str) -> None:
    site = fed.site(site_id)
    cfg = fed.config(site_id)
    spec = cfg.annotations.mask_spec(task)
    assert (spec is not None) == (task in site.tasks)
    if spec is None:
        assert not any(task in st.tasks_labelled for st in site.studies)
        return
    folder = fed.root / site_id / spec.path
    found = 0
    for study in site.studies:
        key = str(getattr(fed.study_header(site_id, study), cfg.annotations.match_by))
        path = folder / spec.file_pattern.format(key=key)
        if task not in study.tasks_labelled:
            assert not path.exists(), study.case_id
            continue
        found += 1
        mask, grid = load_nifti(path)
        truth, truth_grid = load_nifti(fed.root / "ground_truth" / study.case_id / f"{task}.nii.gz")
        _assert_same_grid(grid, truth_grid)
        np.testing.assert_array_equal(mask, truth)
    existing = list(folder.iterdir()) if folder.exists() else []
    assert len(existing) == found


def test_calcium_burden_shows_in_ground_truth(fed: Federation) -> None:
    burdened = [st for _, st in _studies(fed) if st.calcium_burden in ("moderate", "severe")]
    assert burdened
    voxels = [
        int(load_nifti(fed.root / "ground_truth" / st.case_id / "calcification.nii.gz")[0].sum()) for st in burdened
    ]
    assert sum(voxels) > 0


def test_held_out_sites_have_no_annotations(fed: Federation) -> None:
    held_out = [s for s in fed.record.sites if s.held_out]
    assert held_out
    for site in held_out:
        assert not (fed.root / site.folder / "annotations").exists()
        cfg = fed.config(site.site_id)
        assert cfg.annotations.landmarks is None
        assert cfg.annotations.calcification is None
        assert cfg.annotations.coronaries is None
        assert all(st.tasks_labelled == [] for st in site.studies)


# --- ground truth --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("site_id", SITE_IDS)
def test_ground_truth_lies_on_the_correct_series(fed: Federation, site_id: str) -> None:
    for study in fed.site(site_id).studies:
        gt = fed.root / "ground_truth" / study.case_id
        points = read_landmarks_json(gt / "landmarks.json")
        assert list(points) == list(LANDMARK_NAMES)
        files = fed.series(site_id, str(study.correct_series_uid))
        series_grid = _grid_of_series(files)
        masks = {}
        for name in GT_MASKS:
            arr, grid = load_nifti(gt / f"{name}.nii.gz")
            assert arr.dtype == np.uint8, name
            _assert_same_grid(grid, series_grid)
            masks[name] = arr
        assert set(np.unique(masks["heart"]).tolist()) <= {0, *HEART_LABELS.values()}
        assert set(np.unique(masks["calcification"]).tolist()) <= {0, 1}
        if study.calcium_burden == "none":
            assert not masks["calcification"].any(), "no calcium in a patient without calcium burden"
        assert masks["coronaries"].any()
        heart = masks["heart"]
        for name, p in points.items():
            c = series_grid.lps_to_index(p)
            assert series_grid.contains_index(c, margin=1.0), name
            box = tuple(slice(int(v) - 1, int(v) + 2) for v in np.rint(c))
            assert LANDMARK_STRUCTURE[name] in set(np.unique(heart[box]).tolist()), name
        # the labels match the image: contrast blood where the GT says aorta / LV, less in the myocardium
        hu = _hu_volume(files)
        aorta = float(np.median(hu[heart == HEART_LABELS["aorta"]]))
        lv = float(np.median(hu[heart == HEART_LABELS["left_ventricle"]]))
        myo = float(np.median(hu[heart == HEART_LABELS["myocardium"]]))
        outside = float(np.median(hu[heart == 0]))
        assert aorta > 200, aorta
        assert lv > 200, lv
        assert myo < min(aorta, lv) - 80, (myo, aorta, lv)
        assert outside < myo


# --- determinism -------------------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_generation_is_byte_identical(fed: Federation, tmp_path: Path) -> None:
    generate_federation(tmp_path, SETTINGS)
    assert (tmp_path / "federation.json").read_text() == (fed.root / "federation.json").read_text()
    first, second = _tree(fed.root), _tree(tmp_path)
    assert sorted(first) == sorted(second)
    different = [name for name in first if first[name] != second[name]]
    assert different == [], f"{len(different)} files differ, e.g. {different[:3]}"


def test_other_seed_changes_uids_and_landmarks(fed: Federation, tmp_path: Path) -> None:
    other = FederationSettings(
        sites=1, cases_per_site=1, seed=8, size=SETTINGS.size, series_per_study=1, held_out_sites=0
    )
    record = generate_federation(tmp_path, other)
    mine, theirs = fed.record.sites[0].studies[0], record.sites[0].studies[0]
    assert mine.case_id == theirs.case_id
    assert mine.study_uid != theirs.study_uid
    assert mine.correct_series_uid != theirs.correct_series_uid
    a = read_landmarks_json(fed.root / "ground_truth" / mine.case_id / "landmarks.json")
    b = read_landmarks_json(tmp_path / "ground_truth" / theirs.case_id / "landmarks.json")
    for name in LANDMARK_NAMES:
        assert np.linalg.norm(np.subtract(a[name], b[name])) > 1e-3, name


def test_case_does_not_depend_on_federation_size(fed: Federation, tmp_path: Path) -> None:
    smaller = FederationSettings(
        sites=1,
        cases_per_site=1,
        seed=SETTINGS.seed,
        size=SETTINGS.size,
        series_per_study=SETTINGS.series_per_study,
        held_out_sites=0,
    )
    record = generate_federation(tmp_path, smaller)
    mine, theirs = fed.record.sites[0].studies[0], record.sites[0].studies[0]
    assert theirs == mine
    case = mine.case_id
    for name in ("landmarks.json", "heart.nii.gz", "calcification.nii.gz"):
        assert (tmp_path / "ground_truth" / case / name).read_bytes() == (
            fed.root / "ground_truth" / case / name
        ).read_bytes(), name
    ours = fed.series("site-01", str(mine.correct_series_uid))
    theirs_files = sorted((tmp_path / "site-01" / "pacs").rglob(ours[0][0].name))
    assert [p.relative_to(tmp_path) for p in theirs_files if p.read_bytes() == ours[0][0].read_bytes()] == [
        ours[0][0].relative_to(fed.root)
    ]


# --- dcm2niix read-back -----------------------------------------------------------------------------------------


def _integer_map(affine: npt.NDArray[np.float64], grid: Grid, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Integer matrix and offset taking a dcm2niix voxel index to the GT grid index (asserts it is integral)."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    ras = corners @ affine[:3, :3].T + affine[:3, 3]
    gt = grid.lps_to_index(ras_to_lps(ras))
    design = np.column_stack([corners, np.ones(len(corners))])
    coef, *_ = np.linalg.lstsq(design, gt, rcond=None)
    m, t = np.rint(coef[:3].T), np.rint(coef[3])
    np.testing.assert_allclose(coef[:3].T, m, atol=1e-5)
    np.testing.assert_allclose(coef[3], t, atol=1e-3)
    return m.astype(int), t.astype(int)


@pytest.mark.slow
@pytest.mark.parametrize("site_id", SITE_IDS)
def test_dcm2niix_reads_correct_series_onto_ground_truth(
    fed: Federation, site_id: str, tmp_path: Path, dcm2niix_exe: str
) -> None:
    exe = dcm2niix_exe
    study = fed.site(site_id).studies[0]
    files = fed.series(site_id, str(study.correct_series_uid))
    series_dir = tmp_path / "series"
    series_dir.mkdir()
    for path, _ in files:  # flat sites mix every series of a study in one folder: copy just this one
        shutil.copy2(path, series_dir / path.name)
    out = tmp_path / "nii"
    out.mkdir()
    run = subprocess.run(
        [exe, "-z", "y", "-b", "n", "-f", "out", "-o", str(out), str(series_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = f"dcm2niix exit {run.returncode}: {run.stdout}{run.stderr}"
    niftis = sorted(out.glob("*.nii.gz"))
    assert run.returncode == 0, log
    assert len(niftis) == 1, log
    img = nib.load(niftis[0])
    data = np.asarray(img.get_fdata(), dtype=np.float64).reshape(img.shape[:3])
    affine = np.asarray(img.affine, dtype=np.float64)

    gt_dir = fed.root / "ground_truth" / study.case_id
    heart, grid = load_nifti(gt_dir / "heart.nii.gz")
    assert data.size == heart.size

    # (a) every dcm2niix voxel is a voxel of the GT grid, and each GT voxel is hit once
    idx = np.indices(data.shape).reshape(3, -1).T.astype(np.float64)
    ras = idx @ affine[:3, :3].T + affine[:3, 3]
    gt_idx = grid.lps_to_index(ras_to_lps(ras))
    rounded = np.rint(gt_idx)
    np.testing.assert_allclose(gt_idx, rounded, atol=1e-3)
    ijk = rounded.astype(int)
    assert (ijk >= 0).all()
    assert (ijk < np.array(grid.shape)).all()
    assert len(np.unique(ijk, axis=0)) == heart.size
    gt_labels = heart[ijk[:, 0], ijk[:, 1], ijk[:, 2]].reshape(data.shape)
    assert np.median(data[gt_labels == HEART_LABELS["aorta"]]) > 200, "aorta of the GT is bright in dcm2niix data"

    # (b) landmarks: same place through the integer voxel map; the right structure and contrast blood around them
    m, t = _integer_map(affine, grid, data.shape)
    inv = np.linalg.inv(affine)
    for name, p in read_landmarks_json(gt_dir / "landmarks.json").items():
        c = inv[:3, :3] @ lps_to_ras(p) + inv[:3, 3]
        np.testing.assert_allclose(grid.index_to_lps(m @ c + t), p, atol=1e-3, err_msg=name)
        centre = np.rint(c).astype(int)
        lo = np.maximum(centre - 1, 0)
        hi = np.minimum(centre + 2, data.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        assert LANDMARK_STRUCTURE[name] in set(np.unique(gt_labels[box]).tolist()), name
        assert data[box].max() > 150, f"{name}: no contrast blood in the dcm2niix neighbourhood"


def test_federation_json_is_plain_json(fed: Federation) -> None:
    doc = json.loads((fed.root / "federation.json").read_text())
    assert doc["format_version"] == 1
    assert [s["site_id"] for s in doc["sites"]] == SITE_IDS
