"""Coronary-artery masks as site annotations: generated at the configured site only, imported into its dataset."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from cardiofm.contracts.dataset import CaseRecord
from cardiofm.contracts.federation import FederationRecord
from cardiofm.contracts.site import SiteConfig
from cardiofm.contracts.steps import ImportLabelsParams
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.nifti import load_nifti, save_nifti
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.phantoms.scanners import StudySize
from cardiofm.pipeline.case_steps import STUDY_FILE
from cardiofm.pipeline.dataset_step import _copy_case
from cardiofm.pipeline.labels_step import import_labels_case
from cardiofm.pipeline.match_keys import KEY_FILE, load_or_create_secret, match_hash

SETTINGS = FederationSettings(
    sites=2,
    cases_per_site=2,
    seed=11,
    size=StudySize.preset("tiny"),
    series_per_study=1,
    held_out_sites=0,
    label_fraction=(1.0, 1.0),
    coronary_sites=(0,),
)


@pytest.fixture(scope="module")
def federations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, FederationRecord]:
    """The same federation with coronary masks at site 0, and without any."""
    with_cor = tmp_path_factory.mktemp("with")
    without = tmp_path_factory.mktemp("without")
    record = generate_federation(with_cor, SETTINGS)
    generate_federation(without, replace(SETTINGS, coronary_sites=()))
    return with_cor, without, record


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_only_the_configured_site_holds_coronary_masks(federations: tuple[Path, Path, FederationRecord]) -> None:
    with_cor, without, record = federations
    assert record.sites[0].tasks == ["landmarks", "septum", "calcification", "coronaries"]
    assert "coronaries" not in record.sites[1].tasks
    assert "coronaries" in record.tasks
    assert all(st.tasks_labelled[-1] == "coronaries" for st in record.sites[0].studies)
    # the other site, and every ground truth, are byte for byte those of a federation without coronary masks
    assert _files(with_cor / "site-02") == _files(without / "site-02")
    assert _files(with_cor / "ground_truth") == _files(without / "ground_truth")
    # the coronary site differs only by its coronary masks and their site.yaml entry
    a, b = _files(with_cor / "site-01"), _files(without / "site-01")
    extra = sorted(set(a) - set(b))
    assert extra == sorted(
        f"annotations/coronaries/{st.patient_id}_coronaries.nii.gz" for st in record.sites[0].studies
    )
    assert {k for k in b if a[k] != b[k]} == {"site.yaml"}
    cfg = SiteConfig.model_validate(yaml.safe_load((with_cor / "site-01" / "site.yaml").read_text()))
    assert cfg.annotations.coronaries is not None
    assert cfg.annotations.coronaries.format == "nifti"
    old = SiteConfig.model_validate(yaml.safe_load((without / "site-01" / "site.yaml").read_text()))
    assert cfg.model_copy(update={"annotations": cfg.annotations.model_copy(update={"coronaries": None})}) == old
    for study in record.sites[0].studies:  # the site's masks are the ground-truth masks
        site_mask = with_cor / "site-01" / "annotations" / "coronaries" / f"{study.patient_id}_coronaries.nii.gz"
        assert site_mask.read_bytes() == (with_cor / "ground_truth" / study.case_id / "coronaries.nii.gz").read_bytes()


def test_a_held_out_site_cannot_hold_coronary_masks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="coronary_sites"):
        generate_federation(tmp_path, replace(SETTINGS, held_out_sites=1, coronary_sites=(1,)))


def test_coronary_masks_arrive_in_the_dataset_of_the_configured_site(
    federations: tuple[Path, Path, FederationRecord], tmp_path: Path
) -> None:
    root, _, record = federations
    for site, expect in ((record.sites[0], True), (record.sites[1], False)):
        params = ImportLabelsParams(site_config=str(root / site.folder / "site.yaml"))
        for study in site.studies:
            gt = root / "ground_truth" / study.case_id
            truth, truth_grid = load_nifti(gt / "coronaries.nii.gz")
            # a crop-heart output on a sub-box of the series grid (off by a few voxels on every axis)
            lo = np.array([3, 5, 2])
            shape = tuple(int(n) for n in np.asarray(truth_grid.shape) - lo - 4)
            crop_grid = Grid(shape, truth_grid.spacing_mm, tuple(truth_grid.index_to_lps(lo)), truth_grid.direction)
            in_dir, out_dir = tmp_path / study.case_id / "crop", tmp_path / study.case_id / "labels"
            in_dir.mkdir(parents=True)
            out_dir.mkdir()
            save_nifti(in_dir / "image.nii.gz", np.zeros(shape, dtype=np.int16), crop_grid)
            save_nifti(in_dir / "heart.nii.gz", np.ones(shape, dtype=np.uint8), crop_grid)
            secret = load_or_create_secret(root / site.folder / KEY_FILE)
            hashed = {"PatientID": match_hash(secret, study.patient_id)}
            study_json = {"study_uid": study.study_uid, "series_uid": "1.2", "match_hmac": hashed}
            (in_dir / STUDY_FILE).write_text(json.dumps(study_json))

            notes = import_labels_case(in_dir, out_dir, params)
            entry = _copy_case(out_dir, tmp_path / "dataset" / study.case_id, CaseRecord(case_id=study.case_id))

            label = tmp_path / "dataset" / study.case_id / "labels" / "coronaries.nii.gz"
            assert ("coronaries" in entry.tasks) is expect, (study.case_id, entry.tasks)
            assert label.is_file() is expect
            if not expect:
                continue
            assert entry.tasks == ["landmarks", "septum", "calcification", "coronaries"]
            assert any(n.startswith("coronaries mask imported") for n in notes), notes
            got, got_grid = load_nifti(label)
            assert got_grid.shape == shape
            expected = np.asarray(truth)[lo[0] : lo[0] + shape[0], lo[1] : lo[1] + shape[1], lo[2] : lo[2] + shape[2]]
            assert expected.any()
            np.testing.assert_array_equal(np.asarray(got), (expected > 0).astype(np.uint8))
