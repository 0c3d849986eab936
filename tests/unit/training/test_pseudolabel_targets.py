"""Hard targets from a teacher's pseudo-labels: confidence filtering per landmark, not per case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cardiofm.constants import IGNORE_LABEL, TASK_LANDMARKS
from cardiofm.contracts.dataset import ManifestCase
from cardiofm.imaging.geometry import Grid
from cardiofm.training.config import TrainConfig
from cardiofm.training.data import Sample, foreground_voxels
from cardiofm.training.pseudolabel import attach_pseudolabels

NAMES = TASK_LANDMARKS["landmarks"]
GRID = Grid((24, 24, 24), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
#: voxel of each landmark in the teacher's output
AT = {"RCC": (6, 6, 6), "LCC": (6, 17, 6), "NCC": (17, 6, 6), "RCO": (17, 17, 17), "LCO": (6, 6, 17)}


def _pseudo(root: Path, confidence: dict[str, float]) -> Path:
    """A teacher's output: blobs at ``AT`` (RCO: one voxel), a faint halo round RCO, points with ``confidence``."""
    probs = np.zeros((1 + len(NAMES), *GRID.shape), dtype=np.float32)
    probs[0] = 1.0
    for n, (i, j, k) in AT.items():
        c = NAMES.index(n) + 1
        r = 0 if n == "RCO" else 1  # the teacher segments RCO as one voxel, far less than a 4 mm sphere
        probs[:, i - r : i + r + 1, j - r : j + r + 1, k - r : k + r + 1] = 0.0
        probs[c, i - r : i + r + 1, j - r : j + r + 1, k - r : k + r + 1] = 1.0
    i, j, k = AT["RCO"]
    halo = (slice(None), slice(i - 4, i + 5), j + 3, slice(k - 1, k + 2))  # beyond RCO's 4 mm sphere
    probs[halo] = 0.0
    probs[(0, *halo[1:])] = 0.8
    probs[(NAMES.index("RCO") + 1, *halo[1:])] = 0.2
    (root / "landmarks").mkdir(parents=True)
    np.savez_compressed(root / "landmarks" / "case-a.npz", probabilities=np.rint(probs * 255).astype(np.uint8))
    points = {
        n: {"lps_mm": list(GRID.index_to_lps(AT[n])), "confidence": confidence[n]} for n in NAMES if n in confidence
    }
    (root / "landmarks" / "case-a.json").write_text(json.dumps({"task": "landmarks", "points": points}))
    return root


def _attach(root: Path) -> np.ndarray:
    sample = Sample("case-a", np.zeros(GRID.shape, dtype=np.float32), GRID)
    case = ManifestCase.model_construct(case_id="case-a", tasks=[], landmarks=[])
    attach_pseudolabels(sample, case, root, TrainConfig(tasks=("landmarks",), min_confidence=0.5))
    assert set(sample.soft) == {"landmarks"}
    return sample.targets["landmarks"]


def test_an_unsure_point_is_ignored_and_the_sure_ones_are_still_taught(tmp_path: Path) -> None:
    # RCO below min_confidence and LCO not found at all: before, the case lost its whole hard target
    target = _attach(_pseudo(tmp_path, {"RCC": 0.97, "LCC": 0.9, "NCC": 0.51, "RCO": 0.44}))
    for n in ("RCC", "LCC", "NCC"):
        assert target[AT[n]] == NAMES.index(n) + 1, n
    rco, lco = NAMES.index("RCO") + 1, NAMES.index("LCO") + 1
    i, j, k = AT["RCO"]  # unsure: taught only as far as the teacher segmented it, never as a full sphere
    assert target[i, j, k] == rco
    assert (target == rco).sum() == 1
    assert target[i, j + 1, k] == IGNORE_LABEL  # the rest of its 4 mm sphere: neither landmark nor background
    assert target[i, j + 3, k] == 0  # the faint halo beyond the sphere stays background
    i, j, k = AT["LCO"]
    assert (target[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2] == IGNORE_LABEL).all()  # not found: its blob
    assert not (target == lco).any()
    assert (target == 0).mean() > 0.9  # the rest is background, as the teacher says
    fg = foreground_voxels({"landmarks": target})
    assert len(fg)
    assert not (target[tuple(fg.T)] == IGNORE_LABEL).any()  # patches are drawn round taught voxels


def test_all_sure_points_give_plain_spheres(tmp_path: Path) -> None:
    target = _attach(_pseudo(tmp_path, dict.fromkeys(NAMES, 0.9)))
    assert not (target == IGNORE_LABEL).any()
    assert {int(v) for v in np.unique(target)} == set(range(len(NAMES) + 1))
