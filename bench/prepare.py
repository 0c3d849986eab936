"""Site preparation speed: per-step time per study, and the chain against dcm2niix alone.

Usage: ``python bench/prepare.py [small|full] [studies]``. Generates one synthetic site, converts each
study's correct series with dcm2niix alone, then runs the whole ``prepare`` chain on the same site.
Prints one JSON object with per-step seconds per study and the ratio of the whole chain, heart
segmentation excluded, to dcm2niix alone (target ≤ 2).

The reference is the conversion a site would otherwise run: ``dcm2niix -z y`` (gzipped NIfTI). The
chain's own convert step writes an uncompressed intermediate (``ConvertParams.compress``), so dcm2niix
with those flags (``-z n``) is timed too and printed beside it, as is the ratio against it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cardiofm.dicom.convert import find_dcm2niix
from cardiofm.dicom.index import index_folder
from cardiofm.imaging.heart_fallback import segment_heart_fallback
from cardiofm.imaging.nifti import load_nifti
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.phantoms.scanners import StudySize
from cardiofm.pipeline.case_steps import converted_image
from cardiofm.pipeline.prepare import prepare_site


def dcm2niix_alone(site_dir: Path, correct: set[str], tmp: Path, gzip: bool) -> float:
    """Seconds dcm2niix needs for the correct series of every study (files staged as links)."""
    exe = str(find_dcm2niix())
    index = index_folder(site_dir / "pacs")
    total = 0.0
    for study in index.studies:
        for series in study.series:
            if series.series_uid not in correct:
                continue
            tag = f"{series.series_uid[-8:]}-{'gz' if gzip else 'raw'}"
            src, dst = tmp / f"in-{tag}", tmp / f"out-{tag}"
            src.mkdir()
            dst.mkdir()
            for n, f in enumerate(series.files):
                (src / f"{n:05d}.dcm").symlink_to(f.resolve())
            t0 = time.perf_counter()
            subprocess.run(
                [exe, "-z", "y" if gzip else "n", "-b", "y", "-ba", "y", "-f", "image", "-o", str(dst), str(src)],
                check=True,
                capture_output=True,
            )
            total += time.perf_counter() - t0
    return total


def segmentation_seconds(work: Path) -> float:
    """Seconds of the fallback heart segmenter alone on every converted image."""
    total = 0.0
    for folder in sorted(work.glob("batch/*/convert")):
        data, grid = load_nifti(converted_image(folder))
        hu = np.asarray(data, dtype=np.float32)
        t0 = time.perf_counter()
        segment_heart_fallback(hu, grid)
        total += time.perf_counter() - t0
    return total


def main() -> None:
    """Generate a site, time dcm2niix alone and the whole chain, print the figures."""
    size = sys.argv[1] if len(sys.argv) > 1 else "small"
    studies = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        settings = FederationSettings(
            sites=1, cases_per_site=studies, seed=1, size=StudySize.preset(size), series_per_study=5, held_out_sites=0
        )
        record = generate_federation(tmp / "fed", settings)
        site = record.sites[0]
        correct = {s.correct_series_uid for s in site.studies if s.correct_series_uid}
        t_dcm2niix = dcm2niix_alone(tmp / "fed" / site.folder, correct, tmp, gzip=True)
        t_dcm2niix_raw = dcm2niix_alone(tmp / "fed" / site.folder, correct, tmp, gzip=False)
        t0 = time.perf_counter()
        result = prepare_site(tmp / "fed" / site.folder, tmp / "out")
        t_chain = time.perf_counter() - t0
        t_seg = segmentation_seconds(tmp / "out" / "work")
    n = len(site.studies)
    per_step = {s.step: round(s.seconds / n, 3) for s in result.steps}
    chain_wo_seg = t_chain - t_seg
    print(
        json.dumps(
            {
                "size": size,
                "studies": n,
                "prepared": result.prepared,
                "per_study_s": {
                    "dcm2niix_alone": round(t_dcm2niix / n, 3),
                    "dcm2niix_alone_uncompressed": round(t_dcm2niix_raw / n, 3),
                    **per_step,
                    "segmentation_in_crop_heart": round(t_seg / n, 3),
                    "whole_chain": round(t_chain / n, 3),
                    "whole_chain_without_segmentation": round(chain_wo_seg / n, 3),
                },
                "ratio_chain_without_segmentation_to_dcm2niix": round(chain_wo_seg / t_dcm2niix, 2),
                "target_ratio": 2.0,
                "ratio_chain_without_segmentation_to_dcm2niix_uncompressed": round(chain_wo_seg / t_dcm2niix_raw, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
