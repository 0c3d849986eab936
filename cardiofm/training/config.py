"""Typed training configuration (one model per run: a task teacher, the student, or a head fine-tune)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cardiofm.constants import DOWNSTREAM_TASKS, TASKS
from cardiofm.contracts.preprocessing import PreprocessingConfig


class EncodingConfig(BaseModel):
    """How landmarks become training targets: spheres of ``radius_mm``, as in the paper.

    The heads are trained as segmentations (CE + Dice), so only sphere label maps are training targets;
    Gaussian heatmaps are encoded and decoded by :mod:`cardiofm.labels.encoding` but no loss reads them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["sphere"] = "sphere"
    radius_mm: float = Field(default=4.0, gt=0.0)


class TrainConfig(BaseModel):
    """Everything a training run needs besides the data; stored in every checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Tasks whose heads are trained (a teacher trains exactly one): foundation tasks
    #: (:data:`~cardiofm.constants.TASKS`) or downstream heads (:data:`~cardiofm.constants.DOWNSTREAM_TASKS`).
    tasks: tuple[str, ...]
    patch_size: tuple[int, int, int] = (64, 64, 64)
    batch_size: int = Field(default=2, ge=1)
    steps: int = Field(default=200, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0.0)
    weight_decay: float = Field(default=1e-2, ge=0.0)
    #: Linear warm-up steps, then cosine decay to 1 % of the learning rate.
    warmup_steps: int = Field(default=10, ge=0)
    #: Share of patches centred on a labelled structure (foreground oversampling).
    foreground_fraction: float = Field(default=0.67, ge=0.0, le=1.0)
    augment: bool = True
    seed: int = 0
    #: ``auto``: bf16 autocast on CUDA, full precision on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    num_workers: int = Field(default=0, ge=0)
    device: str = "auto"
    encoding: EncodingConfig = EncodingConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    #: Distillation: weight of the soft-target term, its temperature, and the teacher confidence below
    #: which a pseudo-label is not used. The class-balanced soft term gives each ~30-voxel landmark the
    #: weight of the whole background; at weight 0.5-1 the student grew false landmarks far from the
    #: aortic root (2-3 of 5 landmarks lost to them after 200 steps), at 0.2 none won (measured on the
    #: single-phantom distillation of ``tests/integration/test_learning.py``, two learning rates).
    soft_weight: float = Field(default=0.2, ge=0.0)
    temperature: float = Field(default=2.0, gt=0.0)
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0)
    #: How the soft-target term averages over voxels: ``class`` gives every class the teacher predicts the
    #: same weight (small structures are not drowned by background); ``voxel`` is a plain voxel mean.
    kd_balance: Literal["class", "voxel"] = "class"

    @field_validator("tasks")
    @classmethod
    def _known(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        known = (*TASKS, *DOWNSTREAM_TASKS)
        unknown = [t for t in tasks if t not in known]
        if unknown or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {list(known)}, got {list(tasks)}")
        return tasks
