"""What each data-preparation step does to one case: ``(in_dir, out_dir, params) -> notes``.

The chain is select-series → convert → crop-heart → import-labels; ``study.json`` (site-local:
the study and series UIDs and the keyed hashes of the attributes that name the study in annotation
files, see :mod:`cardiofm.pipeline.match_keys`; never a patient id) travels along.
Each function reads only its input folder (and, for labels, the site's annotation folder) and
writes only its output folder; failures raise a :class:`~cardiofm.errors.CardioFMError`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom

from cardiofm.contracts.selection import SeriesRules
from cardiofm.contracts.site import SiteConfig
from cardiofm.contracts.steps import ConvertParams, CropHeartParams, SelectSeriesParams
from cardiofm.dicom.convert import convert_series
from cardiofm.dicom.index import index_folder
from cardiofm.dicom.selection import select_series
from cardiofm.errors import ConfigError, InputDataError
from cardiofm.imaging.crop import crop_heart
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.heart_fallback import segment_heart_fallback
from cardiofm.imaging.nifti import load_nifti, save_nifti
from cardiofm.pipeline.match_keys import key_file_for, load_or_create_secret, match_hash

logger = logging.getLogger(__name__)

STUDY_FILE = "study.json"
#: DICOM attributes that may name a study in a site's annotation files (site-local only).
MATCH_KEYS = ("PatientID", "AccessionNumber")
#: Field of ``study.json`` holding the keyed hashes of :data:`MATCH_KEYS`.
MATCH_FIELD = "match_hmac"


def load_site_config(path: Path) -> SiteConfig:
    """Read a ``site.yaml``; a missing or invalid file raises ConfigError saying what to fix."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"site config {path.name} not found; pass the site's site.yaml")
    try:
        data = yaml.safe_load(path.read_text())
        return SiteConfig.model_validate(data)
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"site config {path.name} is invalid: {exc}") from exc


def rules_for(params: SelectSeriesParams) -> SeriesRules:
    """The selection rules, with the site's preferred phase filled in when a site config is given."""
    if params.site_config is None:
        return params.rules
    return params.rules.for_site(load_site_config(Path(params.site_config)))


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target.resolve(), link.parent), link)


def _carry(in_dir: Path, out_dir: Path, name: str = STUDY_FILE) -> None:
    if (in_dir / name).is_file():
        shutil.copyfile(in_dir / name, out_dir / name)


def select_case(in_dir: Path, out_dir: Path, params: SelectSeriesParams) -> list[str]:
    """Choose the series of the one study in ``in_dir``; write ``selection.json`` and link its files."""
    index = index_folder(in_dir)
    if not index.studies:
        reasons = "; ".join(p.problem for p in index.problems[:3]) or "no DICOM files"
        raise InputDataError(f"no readable DICOM study in the case folder ({reasons})")
    if len(index.studies) > 1:
        raise InputDataError(f"the case folder mixes {len(index.studies)} studies; give one study per case")
    study = index.studies[0]
    selection = select_series(study, rules_for(params))
    (out_dir / "selection.json").write_text(selection.model_dump_json(indent=2))
    if selection.chosen_series_uid is None:
        raise InputDataError(f"no series fit for TAVI planning: {selection.reason_if_none}")
    chosen = next(s for s in study.series if s.series_uid == selection.chosen_series_uid)
    for n, f in enumerate(chosen.files):
        _link(f, out_dir / "series" / f"{n:05d}.dcm")
    record: dict[str, object] = {"study_uid": study.study_uid, "series_uid": chosen.series_uid}
    notes = [f"chose series {selection.chosen_series_uid[-12:]} of {len(study.series)}"]
    key_file = key_file_for(params.site_config, params.match_key_file)
    if key_file is not None:  # the ids stay in memory; only their keyed hashes are written
        secret = load_or_create_secret(key_file)
        header = pydicom.dcmread(chosen.files[0], stop_before_pixels=True, specific_tags=list(MATCH_KEYS))
        record[MATCH_FIELD] = {k: match_hash(secret, str(header.get(k, "") or "")) for k in MATCH_KEYS}
    else:
        notes.append("no site config: annotations cannot be matched to this study")
    (out_dir / STUDY_FILE).write_text(json.dumps(record, indent=2))
    notes += [f"{len(index.problems)} unreadable file(s) ignored"] if index.problems else []
    return notes


def convert_case(in_dir: Path, out_dir: Path, params: ConvertParams) -> list[str]:
    """Convert the selected series to ``<name>.nii`` (``.nii.gz`` with ``compress``; integer HU) and a sidecar."""
    files = sorted((in_dir / "series").glob("*.dcm"))
    if not files:
        raise InputDataError("no selected series in the input folder; run select-series first")
    result = convert_series(files, out_dir, name=params.name, timeout_s=params.timeout_s, compress=params.compress)
    _carry(in_dir, out_dir)
    spacing = ", ".join(f"{s:.2f}" for s in result.spacing_mm)
    return [f"{result.shape} voxels at ({spacing}) mm", f"dcm2niix {result.dcm2niix_version}"]


def converted_image(folder: Path, name: str = "image") -> Path:
    """The convert step's image in ``folder``: ``<name>.nii`` or ``<name>.nii.gz`` (see ConvertParams.compress)."""
    for suffix in (".nii", ".nii.gz"):
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    raise InputDataError(f"no converted image ({name}.nii or {name}.nii.gz) in the input folder; run convert first")


def _segment(
    image_path: Path, hu: npt.NDArray[np.float32], params: CropHeartParams, grid: Grid, work: Path
) -> npt.NDArray[np.generic]:
    if params.segmenter == "fallback":
        return segment_heart_fallback(hu, grid)
    from cardiofm.imaging.totalseg import run_in_segmenter_venv

    python = Path(params.segmenter_python) if params.segmenter_python else Path(sys.executable)
    device = {"cuda": "gpu", "cpu": "cpu", "auto": "auto"}[params.device]
    mask_path = run_in_segmenter_venv(
        python, image_path, work / "heart_totalseg.nii.gz", params.timeout_s, device=device
    )
    mask, _ = load_nifti(mask_path)
    mask_path.unlink(missing_ok=True)
    return np.asarray(mask)


def crop_case(in_dir: Path, out_dir: Path, params: CropHeartParams) -> list[str]:
    """Segment the heart, crop it with a margin, resample to ``spacing_mm``; writes image, heart mask, crop.json."""
    image_path = converted_image(in_dir)
    data, grid = load_nifti(image_path, float32=True)
    hu = np.asarray(data, dtype=np.float32)
    mask = _segment(image_path, hu, params, grid, out_dir)
    result = crop_heart(
        hu,
        grid,
        (np.asarray(mask, dtype=np.float32) > 0).astype(np.uint8),
        margin_mm=params.margin_mm,
        spacing_mm=params.spacing_mm,
    )
    save_nifti(out_dir / "image.nii.gz", np.rint(result.image).astype(np.int16), result.grid)
    save_nifti(out_dir / "heart.nii.gz", result.mask.astype(np.uint8), result.grid)
    lo, hi = result.bbox_lps_mm
    crop_info = {
        "segmenter": params.segmenter,
        "margin_mm": params.margin_mm,
        "spacing_mm": params.spacing_mm,
        "bbox_lps_mm": [list(map(float, lo)), list(map(float, hi))],
        "shape": list(result.grid.shape),
    }
    (out_dir / "crop.json").write_text(json.dumps(crop_info, indent=2))
    _carry(in_dir, out_dir)
    return [f"{params.segmenter} segmenter, crop {result.grid.shape} at {params.spacing_mm} mm"]
