"""The model engine learns: a teacher overfits one phantom to < 3 mm, a student distilled from it (teacher
targets only) gets within 2× of the teacher's error, errors below half a voxel counting as half a voxel;
artefacts carry their settings."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from trained_teacher import SPACING_MM, Trained

from cardiofm.constants import TASK_LANDMARKS
from cardiofm.contracts.dataset import ManifestCase
from cardiofm.contracts.preprocessing import PreprocessingConfig
from cardiofm.errors import InputDataError
from cardiofm.evaluation.evaluate import Truth, dataset_truth, evaluate_dataset
from cardiofm.models.config import ModelConfig
from cardiofm.training.checkpoint import load_checkpoint
from cardiofm.training.config import TrainConfig
from cardiofm.training.data import load_manifest
from cardiofm.training.pseudolabel import pseudolabel_dataset
from cardiofm.training.trainer import TrainResult, load_training_samples, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: At 400 steps NCC (the teacher's least certain landmark) stayed below the background in 2 of 4 seeds; at 600
#: every seed tried found all five within the bound
STUDENT_STEPS = 600
#: Errors below half a voxel count as half a voxel when student and teacher are compared: the overfit teacher
#: lands 0.1-0.3 mm from the truth, and its own point moves by up to 0.15 mm between the two decoders, so
#: "2x of 0.08 mm" would compare numerical noise, not what the student learnt.
RESOLUTION_FLOOR_MM = SPACING_MM / 2


def test_loss_falls(trained: Trained) -> None:
    assert len(trained.result.history) == trained.config.steps
    assert trained.result.mean_loss(first=False, n=20) < 0.3 * trained.result.mean_loss(first=True, n=20)


def _landmark_report(checkpoint: Path, dataset: Path, trained: Trained) -> dict[str, dict[str, float]]:
    """Per-landmark errors of ``checkpoint`` on ``dataset`` against the ground truth of the overfit case."""
    labelled = load_manifest(trained.dataset)

    def truth(_: Path, case: ManifestCase) -> Truth:
        if case.case_id != trained.case_id:
            return Truth()
        return dataset_truth(trained.dataset, labelled.case(case.case_id))  # its labels, even from an unlabelled copy

    report = evaluate_dataset(checkpoint, dataset, split="all", truth=truth)
    per: dict[str, dict[str, float]] = report["landmarks"]["per_landmark"]  # type: ignore[index]
    return per


@pytest.fixture(scope="module")
def teacher_errors(trained: Trained) -> dict[str, dict[str, float]]:
    return _landmark_report(trained.result.checkpoint, trained.dataset, trained)


def test_teacher_overfits_one_phantom_below_3_mm(teacher_errors: dict[str, dict[str, float]]) -> None:
    per = teacher_errors
    for name in TASK_LANDMARKS["landmarks"]:
        assert per[name]["n"] == 1
        assert per[name]["n_missing"] == 0, f"{name} not found"
        assert per[name]["median_mm"] < 3.0, f"{name}: {per[name]['median_mm']:.2f} mm"


def test_checkpoint_carries_preprocessing_and_labels(trained: Trained) -> None:
    ckpt = load_checkpoint(trained.result.checkpoint)
    assert ckpt.train_config.preprocessing == PreprocessingConfig(spacing_mm=SPACING_MM)
    assert ckpt.label_names["landmarks"] == ["background", *TASK_LANDMARKS["landmarks"]]
    model = ckpt.build()
    assert not model.training
    assert set(model.state_dict()) == set(ckpt.state_dict)


def test_a_foreign_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(1)}, bogus)
    with pytest.raises(InputDataError, match="not a cardiofm checkpoint"):
        load_checkpoint(bogus)


def test_pseudolabels_are_compact_and_decoded(trained: Trained, tmp_path: Path) -> None:
    written = pseudolabel_dataset(trained.result.checkpoint, trained.dataset, tmp_path / "pseudo")
    manifest = load_manifest(trained.dataset)
    assert written == {"landmarks": len(manifest.cases)}
    npz = tmp_path / "pseudo" / "landmarks" / f"{trained.case_id}.npz"
    with np.load(npz) as data:
        probs = data["probabilities"]
    assert probs.dtype == np.uint8
    assert probs.shape[0] == 1 + len(TASK_LANDMARKS["landmarks"])
    assert npz.stat().st_size < probs.nbytes / 5  # mostly background: compresses well
    info = json.loads(npz.with_suffix(".json").read_text())
    assert set(info["points"]) == set(TASK_LANDMARKS["landmarks"])
    assert all(0.0 <= p["confidence"] <= 1.0 for p in info["points"].values())


@dataclass
class Distilled:
    site: Path
    result: TrainResult
    config: TrainConfig


def _unlabelled_copy(trained: Trained, out: Path) -> Path:
    """The overfit case as a site without labels (distillation happens where there is no ground truth)."""
    manifest = load_manifest(trained.dataset)
    case = manifest.case(trained.case_id).model_copy(update={"tasks": [], "landmarks": []})
    shutil.copytree(
        trained.dataset / "cases" / trained.case_id,
        out / "cases" / trained.case_id,
        ignore=shutil.ignore_patterns("labels"),
    )
    (out / "manifest.json").write_text(manifest.model_copy(update={"cases": [case]}).model_dump_json(indent=2))
    return out


@pytest.fixture(scope="module")
def distilled(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Distilled:
    root = tmp_path_factory.mktemp("distillation")
    site = _unlabelled_copy(trained, root / "site")
    assert pseudolabel_dataset(trained.result.checkpoint, site, root / "pseudo") == {"landmarks": 1}
    cfg = TrainConfig(
        tasks=("landmarks",),
        steps=STUDENT_STEPS,
        batch_size=2,
        patch_size=(64, 32, 32),
        learning_rate=1e-2,
        augment=False,
        # a third of the patches anywhere: the student must also learn where no landmark is (at 0.9, false
        # blobs grew at the volume border, which foreground-centred patches never reach)
        foreground_fraction=0.67,
        preprocessing=PreprocessingConfig(spacing_mm=SPACING_MM),
        seed=1,
        temperature=2.0,
    )
    samples = load_training_samples([site], cfg, pseudo_dirs=[root / "pseudo"])
    assert [s.case_id for s in samples] == [trained.case_id]
    assert set(samples[0].targets) == set(samples[0].soft) == {"landmarks"}  # teacher hard + soft targets only
    model_cfg = ModelConfig.student(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    result = train(samples, cfg, model_cfg, root / "student.pt")
    return Distilled(site, result, cfg)


def test_student_learns_from_teacher_targets_alone(distilled: Distilled) -> None:
    history = distilled.result.history
    assert all("kd_landmarks" in h for h in history)  # the soft term was on at every step

    def mean(key: str, first: bool) -> float:
        part = history[:20] if first else history[-20:]
        return float(np.mean([h[key] for h in part]))

    # total, hard (teacher spheres) and soft (teacher KL) terms; the hard term stays noisy, as a third of the
    # patches hold no landmark and their Dice is near 1 for any stray voxel
    for key in ("loss", "landmarks", "kd_landmarks"):
        before, after = mean(key, first=True), mean(key, first=False)
        print(f"student {key}: {before:.3f} -> {after:.3f}")
        assert after < 0.5 * before, key


def test_student_distilled_from_the_teacher_is_within_twice_its_error(
    trained: Trained, teacher_errors: dict[str, dict[str, float]], distilled: Distilled
) -> None:
    student = _landmark_report(distilled.result.checkpoint, distilled.site, trained)
    names = TASK_LANDMARKS["landmarks"]
    table = ", ".join(
        f"{n} student {student[n]['median_mm']:.2f} / teacher {teacher_errors[n]['median_mm']:.2f} mm" for n in names
    )
    print(f"distillation after {STUDENT_STEPS} steps: {table}")
    for name in names:
        assert student[name]["n_missing"] == 0, f"student did not find {name}; {table}"
        bound_mm = 2.0 * max(teacher_errors[name]["median_mm"], RESOLUTION_FLOOR_MM)
        assert student[name]["median_mm"] <= bound_mm, f"{name} beyond {bound_mm:.2f} mm; {table}"
