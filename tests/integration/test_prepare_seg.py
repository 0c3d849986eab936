"""``prepare_site`` with calcification masks kept as DICOM SEG gives the same labels as with NIfTI masks.

A 2-site federation is generated; site-01's NIfTI calcification annotations are turned into DICOM SEGs
(highdicom) over the files of each study's correct series, the NIfTI files are removed and ``site.yaml``
switched to ``dicom-seg``. Both variants of the site are prepared and their crop-grid masks compared.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid

from cardiofm.contracts.dataset import CaseRecord, DatasetManifest
from cardiofm.contracts.federation import FederationRecord, SiteRecord
from cardiofm.imaging.geometry import Grid, as_direction, as_point
from cardiofm.imaging.nifti import load_nifti
from cardiofm.imaging.resample import resample_onto
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.phantoms.scanners import StudySize
from cardiofm.pipeline.case_steps import load_site_config
from cardiofm.pipeline.prepare import prepare_site

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SETTINGS = FederationSettings(sites=2, cases_per_site=2, seed=3, size=StudySize("t", 96, 80), held_out_sites=0)
SITE_ID = "site-01"
CATEGORY = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
CALCIFICATION = hd.sr.CodedConcept("18115005", "SCT", "Pathologic calcification")


def dice(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> float:
    x, y = np.asarray(a, dtype=np.float64) > 0, np.asarray(b, dtype=np.float64) > 0
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total


def series_files(site_dir: Path) -> dict[str, list[Path]]:
    """SeriesInstanceUID → its files in the site's PACS folder."""
    found: dict[str, list[Path]] = {}
    for path in sorted((site_dir / "pacs").rglob("*")):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            found.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    return found


def slice_frame(mask: npt.NDArray[np.generic], grid: Grid, ds: pydicom.Dataset) -> npt.NDArray[np.uint8]:
    """The mask sampled at the pixel centres of one CT slice, as a DICOM frame ``[row, column]``."""
    orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    row_dir, col_dir = orientation[:3], orientation[3:]
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    plane = Grid(
        shape=(int(ds.Columns), int(ds.Rows), 1),
        spacing_mm=(col_spacing, row_spacing, 1.0),
        origin_lps_mm=as_point([float(v) for v in ds.ImagePositionPatient]),
        direction=as_direction(np.column_stack([row_dir, col_dir, np.cross(row_dir, col_dir)])),
    )
    frame = resample_onto((np.asarray(mask) > 0).astype(np.uint8), grid, plane, order=0, fill_value=0)
    return np.ascontiguousarray(frame[:, :, 0].T)


def write_seg(nifti: Path, ct_files: list[Path], out: Path) -> None:
    mask, grid = load_nifti(nifti)
    sources = [pydicom.dcmread(p) for p in ct_files]
    frames = np.stack([slice_frame(mask, grid, ds) for ds in sources])
    assert int(frames.sum()) == int((np.asarray(mask) > 0).sum())  # the mask was drawn on this series
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Calcification",
        segmented_property_category=CATEGORY,
        segmented_property_type=CALCIFICATION,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=900,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="CardioFM Synthetic",
        manufacturer_model_name="Annotator",
        software_versions="1",
        device_serial_number="0",
    )
    seg.save_as(out)


def convert_site_to_seg(site_dir: Path, site: SiteRecord) -> int:
    """Replace the site's NIfTI calcification masks by DICOM SEGs; returns how many were converted."""
    config = load_site_config(site_dir / "site.yaml")
    calc = config.annotations.calcification
    assert calc is not None
    assert calc.format == "nifti"
    files = series_files(site_dir)
    converted = 0
    for study in site.studies:
        if study.correct_series_uid is None:
            continue
        ct_files = files[study.correct_series_uid]
        key = str(pydicom.dcmread(ct_files[0], stop_before_pixels=True).get(config.annotations.match_by, ""))
        nifti = site_dir / calc.path / calc.file_pattern.format(key=key)
        if not nifti.is_file():
            continue
        write_seg(nifti, ct_files, site_dir / calc.path / f"{key}_calc.dcm")
        nifti.unlink()
        converted += 1
    data = yaml.safe_load((site_dir / "site.yaml").read_text())
    data["annotations"]["calcification"].update({"format": "dicom-seg", "file_pattern": "{key}_calc.dcm"})
    (site_dir / "site.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_site_config(site_dir / "site.yaml").annotations.calcification == calc.model_copy(
        update={"format": "dicom-seg", "file_pattern": "{key}_calc.dcm"}
    )
    return converted


def test_dicom_seg_masks_prepare_like_nifti(tmp_path: Path) -> None:
    root = tmp_path / "federation"
    record: FederationRecord = generate_federation(root, SETTINGS)
    site = next(s for s in record.sites if s.site_id == SITE_ID)
    assert "calcification" in site.tasks
    nifti_dir = root / site.folder
    seg_dir = tmp_path / "seg-site"
    shutil.copytree(nifti_dir, seg_dir)
    converted = convert_site_to_seg(seg_dir, site)
    assert converted == sum(1 for s in site.studies if "calcification" in s.tasks_labelled)
    assert converted > 0
    calc = load_site_config(seg_dir / "site.yaml").annotations.calcification
    assert calc is not None
    assert not list((seg_dir / calc.path).rglob("*.nii.gz"))  # (the site's coronary masks stay NIfTI)

    prepare_site(nifti_dir, tmp_path / "out-nifti")
    prepare_site(seg_dir, tmp_path / "out-seg")
    manifests = {
        name: DatasetManifest.model_validate_json((tmp_path / name / "manifest.json").read_text())
        for name in ("out-nifti", "out-seg")
    }
    by_study = {c.source.study_uid: c for c in manifests["out-nifti"].cases}
    assert sorted(by_study) == sorted(c.source.study_uid for c in manifests["out-seg"].cases)
    compared = voxels = 0
    for case in manifests["out-seg"].cases:
        ref = by_study[case.source.study_uid]
        assert case.tasks == ref.tasks
        seg_case = tmp_path / "out-seg" / "cases" / case.case_id
        ref_case = tmp_path / "out-nifti" / "cases" / ref.case_id
        assert CaseRecord.model_validate_json((seg_case / "case.json").read_text()).label_problems == []
        assert not (seg_case / "labels" / "problems.json").exists()
        ref_mask = ref_case / "labels" / "calcification.nii.gz"
        seg_mask = seg_case / "labels" / "calcification.nii.gz"
        assert seg_mask.is_file() == ref_mask.is_file(), case.case_id
        if not ref_mask.is_file():
            continue
        got, got_grid = load_nifti(seg_mask)
        want, want_grid = load_nifti(ref_mask)
        assert got_grid == want_grid
        assert dice(got, want) >= 0.99, case.case_id
        compared += 1
        voxels += int((np.asarray(want) > 0).sum())
    assert compared == converted
    assert voxels > 0  # not only empty masks compared
