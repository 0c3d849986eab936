"""Phantom generation speed: one full-size study's main series, and a small federation.

Prints one JSON object. Targets (issue: foundation): a full-size main series (512×512×~300) in ≤ 10 s
on one core; a small federation in seconds and a few hundred MB at most.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cardiofm.phantoms.anatomy import sample_anatomy
from cardiofm.phantoms.dicom_writer import PatientInfo, SeriesInfo, StudyInfo, write_ct_series
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.phantoms.render import Contrast, render
from cardiofm.phantoms.scanners import StudySize, plan_series, site_profile


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def full_size_main_series(tmp: Path, seed: int) -> dict[str, float]:
    """Render and write the main series of one full-size study; times in seconds."""
    rng = np.random.default_rng(seed)
    profile = site_profile(0, rng)
    t0 = time.perf_counter()
    anatomy = sample_anatomy(rng)
    centre = np.array([anatomy.heart_centre[0], anatomy.heart_centre[1], anatomy.root.centre[2] - 35.0])
    plan = plan_series("main", profile, StudySize.preset("full"), centre, rng)
    out = render(
        anatomy,
        plan.grid,
        Contrast.enhanced_scan(400, "optimal"),
        plan.noise_hu,
        rng,
        with_labels=True,
        fov_mm=profile.fov_mm,
    )
    t1 = time.perf_counter()
    write_ct_series(
        out.hu,
        plan.grid,
        PatientInfo("P000001", "BENCH^P000001", anatomy.sex, anatomy.age_years),
        StudyInfo("1.2.3.4", "1", "A1", "bench", "20300101", "120000", "bench"),
        SeriesInfo(
            "1.2.3.4.5",
            "1.2.3.4.6",
            2,
            "bench main",
            ("ORIGINAL", "PRIMARY", "AXIAL"),
            0.75,
            "Bv36",
            "Iomeprol",
            40.0,
            100,
            "SIEMENS",
            "bench",
        ),
        tmp / "full",
    )
    t2 = time.perf_counter()
    return {
        "shape": list(plan.grid.shape),
        "render_s": round(t1 - t0, 2),
        "write_s": round(t2 - t1, 2),
        "total_s": round(t2 - t0, 2),
        "mb": round(_dir_mb(tmp / "full"), 1),
    }


def small_federation(tmp: Path, seed: int) -> dict[str, float]:
    """Generate the demo-sized federation (3 sites × 6 studies × 5 series)."""
    t0 = time.perf_counter()
    rec = generate_federation(tmp / "fed", FederationSettings(sites=3, cases_per_site=6, seed=seed))
    seconds = time.perf_counter() - t0
    studies = sum(len(s.studies) for s in rec.sites)
    return {
        "studies": studies,
        "total_s": round(seconds, 2),
        "per_study_s": round(seconds / studies, 2),
        "mb": round(_dir_mb(tmp / "fed"), 1),
    }


def main() -> None:
    """Run both measurements and print them with their targets."""
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        full = full_size_main_series(tmp, seed)
        small = small_federation(tmp, seed)
    result = {
        "full_size_main_series": full,
        "full_size_target_s": 10.0,
        "full_size_ratio_to_target": round(full["total_s"] / 10.0, 2),
        "small_federation": small,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
