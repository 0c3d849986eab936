"""``import-labels``: a site's annotations → canonical landmarks (LPS mm) and masks on the crop grid.

Masks are those of :data:`~cardiofm.constants.MASK_TASKS` the site keeps (calcification, and the coronary
arteries of the downstream ``coronaries`` head), each written as ``labels/<task>.nii.gz`` (uint8, 0/1).

Every problem (unknown id, duplicate, undefined position, point outside the crop, implausible landmark
geometry, unreadable mask) is reported in ``labels/problems.json`` and the case's provenance; nothing is
dropped silently. Points of a likely label swap (see :mod:`cardiofm.labels.qa`) are reported and left out
of ``landmarks.json``. A case without annotations is not an error: it becomes an unlabelled case for
pseudo-labelling.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from cardiofm.constants import MASK_TASKS
from cardiofm.contracts.landmarks import Point3
from cardiofm.contracts.site import LandmarkAnnotations, MaskAnnotations, SiteConfig
from cardiofm.contracts.steps import ImportLabelsParams
from cardiofm.errors import CardioFMError, InputDataError
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.nifti import load_nifti, read_grid, save_nifti
from cardiofm.imaging.resample import resample_onto
from cardiofm.labels.formats import (
    ImportResult,
    RawPoint,
    apply_label_map,
    read_csv,
    read_mps,
    read_mrk_json,
    write_landmarks_json,
)
from cardiofm.labels.labelmap import LabelMap
from cardiofm.labels.qa import check_landmark_geometry
from cardiofm.labels.seg import read_seg_mask
from cardiofm.pipeline.case_steps import MATCH_FIELD, STUDY_FILE, load_site_config
from cardiofm.pipeline.match_keys import find_file, find_row, key_file_for, load_or_create_secret, redact

logger = logging.getLogger(__name__)

#: Files of the crop step carried into this step's output (so build-dataset reads one folder).
CARRIED = ("image.nii.gz", "heart.nii.gz", "crop.json", STUDY_FILE)


def _match_key(site: SiteConfig, study: dict[str, object]) -> str:
    """The keyed hash of the study attribute the site names its annotation files by."""
    match = study.get(MATCH_FIELD)
    if match is None:
        raise InputDataError("select-series recorded no match keys (it ran without the site's site.yaml)")
    key = str(match.get(site.annotations.match_by, "")) if isinstance(match, dict) else ""
    if not key:
        raise InputDataError(f"the study has no {site.annotations.match_by}; the site matches annotations by it")
    return key


def _raw_points(
    spec: LandmarkAnnotations, site_dir: Path, hashed: str, secret: bytes, keys: set[str]
) -> list[RawPoint] | None:
    """The study's raw annotation points, or None when the site has none for it; adds its raw key to ``keys``."""
    if spec.format == "csv":
        table = site_dir / spec.path
        if not table.is_file():
            return None
        if spec.csv is None:
            raise InputDataError("the site's CSV landmark source has no csv layout in site.yaml")
        rows = read_csv(table, spec.csv)
        key = find_row(list(rows), hashed, secret)
        if key is None:
            return None
        keys.add(key)
        return rows[key]
    found = find_file(site_dir / spec.path, spec.file_pattern, hashed, secret)
    if found is None:
        return None
    path, key = found
    keys.add(key)
    return read_mps(path) if spec.format == "mps" else read_mrk_json(path)


def _inside(points: dict[str, Point3], grid: Grid) -> tuple[dict[str, Point3], list[str]]:
    kept: dict[str, Point3] = {}
    problems: list[str] = []
    for name, xyz in points.items():
        if grid.contains_index(grid.lps_to_index(xyz)):
            kept[name] = xyz
        else:
            problems.append(f"{name}: lies outside the heart crop; check the annotation or the crop margin")
    return kept, problems


def _geometry_qa(points: dict[str, Point3]) -> tuple[dict[str, Point3], list[str]]:
    """Geometry QA of the kept points: every finding is a problem; points of a likely label swap are dropped."""
    kept = dict(points)
    problems: list[str] = []
    for finding in check_landmark_geometry(points):
        if finding.kind == "swapped":
            for name in finding.names:
                kept.pop(name, None)
            problems.append(f"{', '.join(finding.names)}: {finding.message}; not used for training; fix the annotation")
        else:
            problems.append(f"{', '.join(finding.names)}: {finding.message}")
    return kept, problems


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _import_mask(spec: MaskAnnotations, path: Path, crop_grid: Grid, out: Path) -> int:
    """Resample one site mask (NIfTI or DICOM SEG) onto the crop grid, nearest neighbour; returns its voxel count."""
    mask, grid = read_seg_mask(path, spec.segment) if spec.format == "dicom-seg" else load_nifti(path)
    if np.issubdtype(mask.dtype, np.inexact) and not bool(np.isfinite(mask).all()):  # integers are always finite
        raise InputDataError(f"{path.name} contains NaN or infinite values; re-export the mask")
    on_crop = resample_onto((np.asarray(mask) > 0).astype(np.uint8), grid, crop_grid, order=0, fill_value=0)
    save_nifti(out, on_crop.astype(np.uint8), crop_grid)
    return int(on_crop.sum())


def import_labels_case(in_dir: Path, out_dir: Path, params: ImportLabelsParams) -> list[str]:
    """Import the case's landmarks and masks (calcification, coronaries) onto the crop grid."""
    site = load_site_config(Path(params.site_config))
    site_dir = Path(params.site_dir) if params.site_dir else Path(params.site_config).parent
    key_file = key_file_for(params.site_config, params.match_key_file)
    secret = load_or_create_secret(key_file) if key_file is not None else b""
    study = json.loads((in_dir / STUDY_FILE).read_text())
    crop_grid = read_grid(in_dir / "image.nii.gz")
    for name in CARRIED:
        if (in_dir / name).is_file():
            _link_or_copy(in_dir / name, out_dir / name)
    labels = out_dir / "labels"
    labels.mkdir()
    problems: list[str] = []
    notes: list[str] = []
    raw_keys: set[str] = set()  # in memory only: redacted from every message written
    try:
        key: str | None = _match_key(site, study)
    except InputDataError as exc:  # the image is still usable, as an unlabelled case
        key, problems = None, [f"annotations not looked up: {exc}"]
    spec = site.annotations.landmarks
    if spec is not None and key is not None:
        try:
            raw = _raw_points(spec, site_dir, key, secret, raw_keys)
        except CardioFMError as exc:
            raw, problems = None, [f"landmark file unusable: {exc}"]
        if raw is not None:
            result: ImportResult = apply_label_map(raw, LabelMap(aliases=spec.label_map))
            problems += [p.message for p in result.problems]
            kept, outside = _inside(result.points, crop_grid)
            problems += outside
            kept, doubtful = _geometry_qa(kept)
            problems += doubtful
            write_landmarks_json(labels / "landmarks.json", kept)
            notes.append(f"{len(kept)} landmark(s) imported")
    for task in MASK_TASKS:
        mask_spec = site.annotations.mask_spec(task)
        if mask_spec is None or key is None:
            continue
        found = find_file(site_dir / mask_spec.path, mask_spec.file_pattern, key, secret)
        if found is None:
            continue
        path, raw_key = found
        raw_keys.add(raw_key)
        try:
            voxels = _import_mask(mask_spec, path, crop_grid, labels / f"{task}.nii.gz")
            notes.append(f"{task} mask imported ({voxels} voxels on the crop)")
        except CardioFMError as exc:
            problems.append(f"{task} mask unusable: {exc}")
    problems = [redact(p, raw_keys, site.annotations.match_by) for p in problems]
    if problems:
        (labels / "problems.json").write_text(json.dumps(problems, indent=2))
        logger.warning("import-labels: %d annotation problem(s) in case %s", len(problems), in_dir.parent.name)
    return notes + [f"label problem: {p}" for p in problems]
