"""Prediction latency: one CT's DICOM series → landmarks, calcification, measurements and exports, by stage.

Usage: ``python bench/predict.py [--profile demo|paper] [--size small|full] [--cts N] [--device auto|cpu|cuda]
[--model PATH ...]``. Generates phantom CT series, then runs ``cardiofm predict``'s chain (the same function,
in-process) on each and prints one JSON object: seconds per stage per CT (median over the CTs, the first one
reported apart as the cold start), the whole per CT, and the ratio to the target (≤ 10 s per CT on one GPU,
segmenter included).

Without ``--model`` the models are freshly initialised at the profile's sizes (latency does not depend on the
weights): ``demo`` a student on the demo grid (4 mm); ``paper`` the paper's student (SwinUNETR feature size 24,
1 mm, 96³ windows). The segmenter is the fallback (TotalSegmentator's weights are not installed here; on a
site with them, ``--segmenter totalsegmentator`` times the real one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cardiofm.constants import TASKS
from cardiofm.contracts.preprocessing import PreprocessingConfig
from cardiofm.contracts.steps import CropHeartParams
from cardiofm.federated.profiles import get_profile
from cardiofm.models.config import HEAD_CHANNELS, ModelConfig
from cardiofm.models.registry import build_model
from cardiofm.phantoms.federation import FederationSettings, generate_federation
from cardiofm.phantoms.scanners import StudySize
from cardiofm.prediction.run import PredictRequest, predict_ct
from cardiofm.training.checkpoint import save_checkpoint
from cardiofm.training.config import TrainConfig

TARGET_S_PER_CT = 10.0


def student_checkpoint(profile: str, out: Path) -> Path:
    """A freshly initialised student at the profile's sizes, saved as a checkpoint."""
    s = get_profile(profile).settings
    cfg = ModelConfig.student(
        heads={t: HEAD_CHANNELS[t] for t in TASKS},
        feature_size=s.student_feature_size,
        depths=s.student_depths,
        num_heads=s.student_num_heads,
    )
    patch = (s.student_patch_vox,) * 3
    train = TrainConfig(tasks=TASKS, patch_size=patch, preprocessing=PreprocessingConfig(spacing_mm=s.spacing_mm))
    return save_checkpoint(out, build_model(cfg), cfg, train, [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("demo", "paper"), default="demo")
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--cts", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--segmenter", default="fallback")
    parser.add_argument("--model", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = FederationSettings(
            sites=1,
            cases_per_site=args.cts,
            seed=5,
            size=StudySize.preset(args.size),
            held_out_sites=0,
            series_per_study=1,
        )
        record = generate_federation(root / "fed", settings)
        site = record.sites[0]
        models = tuple(args.model) or (str(student_checkpoint(args.profile, root / "student.pt")),)
        runs: list[dict[str, float]] = []
        for n, study in enumerate(site.studies):
            series_dir = root / "fed" / site.folder / "pacs" / study.patient_id
            request = PredictRequest(
                models=models,
                out_dir=root / f"out-{n}",
                input_path=series_dir,
                crop=CropHeartParams(segmenter=args.segmenter),
                device=args.device,
            )
            t0 = time.perf_counter()
            outcome = predict_ct(request)
            runs.append({**outcome.seconds, "total": time.perf_counter() - t0})
            print(f"CT {n + 1}/{len(site.studies)}: {runs[-1]['total']:.1f} s", file=sys.stderr)
    warm = runs[1:] or runs
    stages = sorted({k for r in warm for k in r})
    median = {k: round(statistics.median(r.get(k, 0.0) for r in warm), 3) for k in stages}
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "bench": "predict",
        "profile": args.profile,
        "size": args.size,
        "device": device,
        "threads": torch.get_num_threads(),
        "segmenter": args.segmenter,
        "cts": len(runs),
        "cold_start_s": round(runs[0]["total"], 3),
        "median_s_per_ct_by_stage": median,
        "median_s_per_ct": median["total"],
        "target_s_per_ct_gpu": TARGET_S_PER_CT,
        "ratio_to_target": round(median["total"] / TARGET_S_PER_CT, 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
