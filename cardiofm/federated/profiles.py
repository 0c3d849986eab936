"""Named settings of the whole federated chain: ``demo`` (2 CPU cores, minutes) and ``paper`` (GPUs, days).

A profile is configuration, not code: a :class:`~cardiofm.federated.loopback.ChainSettings` and whether it
needs a GPU. :func:`estimate_gpu_hours` says, before a run starts, what a profile costs each site; the
per-step seconds it uses are stated assumptions for one current data-centre GPU with bf16 autocast
(``bench/gpu_check.sh`` measures the real figure of a machine), not measurements of this code here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from cardiofm.errors import ConfigError
from cardiofm.federated.loopback import ChainSettings


@dataclass(frozen=True)
class Profile:
    """A named chain setting."""

    name: str
    settings: ChainSettings
    #: Whether a CPU run is refused (unless forced): it would take weeks.
    needs_gpu: bool
    description: str


#: Assumed seconds per training step at the paper's sizes (96³ patches, batch 2, bf16) on one current
#: data-centre GPU: the residual U-Net teacher (filters 32…320) and the SwinUNETR student (feature size 24).
PAPER_TEACHER_STEP_S: Final[float] = 0.25
PAPER_STUDENT_STEP_S: Final[float] = 0.40

PROFILES: Final[dict[str, Profile]] = {
    "demo": Profile(
        name="demo",
        # Measured on synthetic federations (seeds 100 and 7, 3-4 sites): a landmark teacher of this size on a
        # 4 mm grid needs about 2000 steps (~100 s on one core) to place held-out points within 5 mm; at 400
        # steps it places none, and 32³ patches at 3 mm cost 2.3× as much per step for a worse result. The
        # SwinUNETR student costs ~1.8 s per 64³ step on one core (36 teacher steps), so on a CPU it gets
        # only a few steps per round: the student needs the paper profile on a GPU.
        settings=ChainSettings(
            num_rounds=4,
            local_steps=500,
            student_local_steps=10,
            spacing_mm=4.0,
            teacher_patch_vox=24,
            teacher_lr=1e-2,
            foreground_fraction=0.67,
            landmark_radius_mm=6.0,
        ),
        needs_gpu=False,
        description=(
            "small models on a 4 mm grid, 4 rounds × 500 teacher steps (10 student steps) per site: "
            "teachers that learn, on 2 CPU cores"
        ),
    ),
    "paper": Profile(
        name="paper",
        settings=ChainSettings(
            num_rounds=20,
            local_epochs=10,
            batch_size=2,
            spacing_mm=1.0,
            teacher_patch_vox=96,
            student_patch_vox=96,
            teacher_filters=(32, 64, 128, 256, 320),
            student_feature_size=24,
            student_depths=(2, 2, 2, 2),
            student_num_heads=(3, 6, 12, 24),
            teacher_lr=1e-2,
            student_lr=1e-4,
            stage_timeout_s=48 * 3600.0,
        ),
        needs_gpu=True,
        description=(
            "Tölle et al. 2024: 1 mm, 96³ patches, SwinUNETR feature size 24, 20 rounds × 10 local epochs, "
            "AdamW lr 1e-2 (teachers) / 1e-4 (student)"
        ),
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``.

    Raises
    ------
    ConfigError
        For an unknown name (the known ones listed).
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown profile {name!r}; known: {sorted(PROFILES)}") from None


def with_overrides(profile: Profile, *, num_rounds: int | None = None, local_steps: int | None = None) -> Profile:
    """``profile`` with rounds or local steps replaced (local steps replace the profile's epochs)."""
    settings = profile.settings
    if num_rounds is not None:
        settings = replace(settings, num_rounds=num_rounds)
    if local_steps is not None:
        settings = replace(settings, local_steps=local_steps, student_local_steps=None, local_epochs=0)
    return replace(profile, settings=settings)


def _steps_per_round(settings: ChainSettings, cases: int, student: bool = False) -> int:
    if settings.local_epochs > 0:
        return settings.local_epochs * math.ceil(max(cases, 1) / settings.batch_size)
    return (settings.student_local_steps or settings.local_steps) if student else settings.local_steps


def estimate_gpu_hours(
    settings: ChainSettings,
    train_cases: Mapping[str, int],
    teacher_tasks: Mapping[str, Sequence[str]],
    teacher_step_s: float = PAPER_TEACHER_STEP_S,
    student_step_s: float = PAPER_STUDENT_STEP_S,
) -> dict[str, float]:
    """Expected GPU hours of training per site for the whole chain, from its cases and the tasks it holds.

    Counted: a local-only and a federated teacher per task the site holds labels for, ``distill`` and
    ``finetune``. Every site distils on all its cases (pseudo-labels), so ``distill`` counts them all; inference,
    data loading and waiting for slower sites are not included.
    """
    hours: dict[str, float] = {}
    for site, cases in train_cases.items():
        per_round = _steps_per_round(settings, cases)
        tasks = len(teacher_tasks.get(site, ()))
        teacher_steps = 2 * tasks * settings.num_rounds * per_round  # local-only + federated teacher per task
        student_steps = 2 * settings.num_rounds * _steps_per_round(settings, cases, student=True)  # distill, finetune
        seconds = teacher_steps * teacher_step_s + student_steps * student_step_s
        hours[site] = round(seconds / 3600.0, 2)
    return hours
