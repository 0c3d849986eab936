"""Tiny on-disk site datasets (manifest + cases) for the training, inference and CLI tests."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cardiofm.contracts.dataset import DatasetManifest, ManifestCase, SourceRef
from cardiofm.imaging.geometry import Grid
from cardiofm.imaging.nifti import save_nifti


@dataclass
class CaseSpec:
    """One synthetic case: HU image, optional heart map and masks (``labels/<task>.nii.gz``), all on ``grid``."""

    case_id: str
    hu: npt.NDArray[np.float32]
    grid: Grid
    heart: npt.NDArray[np.uint8] | None = None
    masks: dict[str, npt.NDArray[np.uint8]] = field(default_factory=dict)
    split: str = "train"


def write_dataset(root: Path, cases: list[CaseSpec]) -> Path:
    """Write ``root/manifest.json`` and ``root/cases/<id>/`` for ``cases``; returns ``root``."""
    entries = []
    for spec in cases:
        case_dir = root / "cases" / spec.case_id
        (case_dir / "labels").mkdir(parents=True)
        save_nifti(case_dir / "image.nii.gz", np.rint(spec.hu).astype(np.int16), spec.grid)
        if spec.heart is not None:
            save_nifti(case_dir / "heart.nii.gz", spec.heart, spec.grid)
        for task, mask in spec.masks.items():
            save_nifti(case_dir / "labels" / f"{task}.nii.gz", mask, spec.grid)
        entries.append(
            ManifestCase(
                case_id=spec.case_id,
                split="test" if spec.split == "test" else "train",
                tasks=list(spec.masks),
                landmarks=[],
                source=SourceRef(study_uid=f"1.2.3.{len(entries)}", series_uid=f"1.2.3.{len(entries)}.1"),
                shape=spec.grid.shape,
                spacing_mm=spec.grid.spacing_mm,
            )
        )
    manifest = DatasetManifest(site_id="site-x", created_with="test", split_seed=0, test_fraction=0.0, cases=entries)
    (root / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return root


def vessel_case(case_id: str, shape: tuple[int, int, int] = (32, 32, 32), spacing_mm: float = 1.0) -> CaseSpec:
    """A noisy soft-tissue volume with a bright tube (the 'coronary') and a heart blob (labels 1..7 in slabs)."""
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    hu = rng.normal(40.0, 30.0, size=shape).astype(np.float32)
    vessel = np.zeros(shape, dtype=np.uint8)
    c = shape[0] // 2
    vessel[c - 2 : c + 2, c - 2 : c + 2, 4:-4] = 1
    hu[vessel > 0] = 450.0
    heart = np.zeros(shape, dtype=np.uint8)
    width = shape[0] // 8
    for label in range(1, 8):  # seven slabs along i, one per heart label
        heart[width * (label - 1) : width * label, 4:-4, 4:-4] = label
    grid = Grid(shape, (spacing_mm,) * 3, (0.0, 0.0, 0.0))
    return CaseSpec(case_id, hu, grid, heart, {"coronaries": vessel})


def calcification_site(root: Path, name: str, cases: int) -> Path:
    """A site dataset of ``cases`` 16³ vessel cases whose tube is labelled as calcification (a teacher task)."""
    specs = []
    for i in range(cases):
        spec = vessel_case(f"{name}-case-{i}", shape=(16, 16, 16))
        spec.masks = {"calcification": spec.masks["coronaries"]}
        specs.append(spec)
    return write_dataset(root / name, specs)
