"""Typed settings of one federated run (Flower ``run_config``) and of a site's SuperNode (``node_config``).

Flower hands both over as flat mappings with kebab-case keys and scalar values (bool, int, float, str);
lists travel as comma-separated text (``teacher-filters = "32,64,128,256,320"``). They are parsed here,
once, into frozen models; every problem becomes a :class:`~cardiofm.errors.ConfigError` naming the
kebab-case key, so the coordinator or the site admin sees exactly which setting to fix.

Stages (one Flower run each):

* ``teacher:<task>``: a residual U-Net teacher for one task, trained only where that task is labelled;
* ``distill``: the multi-head student learns every task from real labels and the teachers' pseudo-labels;
* ``finetune``: student heads only (backbone frozen), each head only where real labels exist;
* ``evaluate``: no training; every site scores a given model on its own cases.

Stdlib and pydantic only.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cardiofm import __version__
from cardiofm.constants import DOWNSTREAM_TASKS, TASKS
from cardiofm.errors import ConfigError

StrategyKind = Literal["fedavg", "fedprox", "fedadam"]
StageKind = Literal["teacher", "distill", "finetune", "evaluate"]

#: Stages without a task suffix.
PLAIN_STAGES: Final[tuple[str, ...]] = ("distill", "finetune", "evaluate")
TEACHER_PREFIX: Final[str] = "teacher:"


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _int_tuple(value: object) -> object:
    """``"4,8,16"`` → ``(4, 8, 16)``; sequences pass through; anything else is left for pydantic to reject."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            return tuple(int(p) for p in parts)
        except ValueError as exc:
            raise ValueError(f"expected comma-separated integers, got {value!r}") from exc
    return value


def _parse_flat(cls: type[BaseModel], data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Map kebab-case keys onto ``cls``'s fields; unknown keys are an error with a did-you-mean hint."""
    known = {_kebab(name): name for name in cls.model_fields}
    values: dict[str, Any] = {}
    for key, value in data.items():
        field_name = known.get(key)
        if field_name is None:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{what}: unknown key {key!r}{hint}; known keys: {sorted(known)}")
        values[field_name] = value
    return values


def _config_error(exc: ValidationError, what: str) -> ConfigError:
    err = exc.errors()[0]
    key = _kebab(str(err["loc"][0])) if err["loc"] else "?"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return ConfigError(f"{what}: {key}: {msg}")


class FederatedRunConfig(BaseModel):
    """One federated stage, as the coordinator starts it (``flwr run --run-config``).

    Attributes
    ----------
    stage
        ``teacher:<task>`` (task one of :data:`~cardiofm.constants.TASKS`), ``distill``, ``finetune`` or
        ``evaluate``.
    num_rounds
        Federated rounds (ignored by ``evaluate``, which sends one evaluation round).
    strategy
        Server aggregation: ``fedavg``, ``fedprox`` (sites add ``proximal_mu/2 * ||w - w_global||²``) or
        ``fedadam`` (server optimiser with learning rate ``server_lr``).
    proximal_mu
        FedProx weight; must be positive for ``fedprox``.
    server_lr
        FedAdam's server learning rate (eta).
    min_nodes
        Sites that must be connected before a round starts, and must answer it: a round answered by fewer
        within ``round_timeout_s`` fails the run (nothing is aggregated from it); a site that dies mid-round
        is left out and the round completes with the others if at least ``min_nodes`` answered.
    round_timeout_s
        Seconds the coordinator waits for the sites' replies in one round, and for ``min_nodes`` sites to be
        connected.
    resume
        Continue the newest unfinished run of this stage in ``out_dir`` (killed, or failed with a summary
        ``status: failed``) from its last round checkpoint, for the remaining of ``num_rounds``; the server
        optimiser's state (FedAdam) is restored with it. Without it a run starts at round 0 even if an
        unfinished run exists; with it and nothing to resume, the run fails with a clear error.
    evaluate_each_round
        Whether every round ends with a federated evaluation of the new global model.
    local_steps
        Optimisation steps per site and round.
    local_epochs
        When above 0, each site instead trains this many passes over its own training cases per round
        (steps = epochs × ⌈cases / batch size⌉, so a larger site trains more steps, as in the paper).
    batch_size, patch_size_vox, learning_rate
        Local training: patches per step, cubic patch edge (voxels), base learning rate.
    foreground_fraction
        Share of training patches centred on a labelled structure (the rest are drawn anywhere in the crop).
    landmark_radius_mm
        Radius of the spheres that landmark and septum points are trained as (a stage that starts from a
        checkpoint keeps the checkpoint's radius, so a student is fine-tuned on the spheres its teachers
        were trained on).
    spacing_mm
        Training spacing (isotropic); must be the same for the teachers and the student, since
        pseudo-labels live on that grid.
    tasks
        Tasks of ``distill`` / ``finetune`` / ``evaluate`` (default: every foundation task); a teacher stage
        trains its own. ``finetune`` and ``evaluate`` also accept downstream tasks
        (:data:`~cardiofm.constants.DOWNSTREAM_TASKS`); fine-tuning one the initial model has no head for adds
        that head, freshly initialised.
    teacher_filters
        Residual U-Net filters per level (teacher stages).
    student_feature_size, student_depths, student_num_heads
        SwinUNETR size (student stages).
    heart_conditioning
        Heart label map as extra input: ``none``, ``onehot`` or ``scaled`` (every stage's model).
    seed
        Base seed; each round and site derive their own from it.
    init_checkpoint
        Coordinator-side checkpoint the stage starts from (``finetune`` and ``evaluate`` need one, e.g. the
        global model of the ``distill`` run).
    out_dir
        Coordinator-side absolute folder for the round checkpoints and the run summary (a sub-folder per run).
    eval_split
        Cases each site evaluates on: its frozen ``test`` split or ``all`` cases.
    cardiofm_version
        Version of cardiofm the app bundle was built for; sites and coordinator refuse to run another.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str
    num_rounds: int = Field(default=3, ge=1)
    strategy: StrategyKind = "fedavg"
    proximal_mu: float = Field(default=0.0, ge=0.0)
    server_lr: float = Field(default=0.01, gt=0.0)
    min_nodes: int = Field(default=2, ge=1)
    round_timeout_s: float = Field(default=3600.0, gt=0.0)
    resume: bool = False
    evaluate_each_round: bool = False
    local_steps: int = Field(default=50, ge=1)
    local_epochs: int = Field(default=0, ge=0)
    batch_size: int = Field(default=2, ge=1)
    patch_size_vox: int = Field(default=64, ge=8)
    learning_rate: float = Field(default=3e-3, gt=0.0)
    foreground_fraction: float = Field(default=0.67, ge=0.0, le=1.0)
    landmark_radius_mm: float = Field(default=4.0, gt=0.0)
    spacing_mm: float = Field(default=1.0, gt=0.0)
    tasks: tuple[str, ...] = TASKS
    teacher_filters: tuple[int, ...] = (32, 64, 128, 256, 320)
    student_feature_size: int = Field(default=24, gt=0)
    student_depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    student_num_heads: tuple[int, int, int, int] = (3, 6, 12, 24)
    heart_conditioning: Literal["none", "onehot", "scaled"] = "none"
    seed: int = 0
    init_checkpoint: str = ""
    out_dir: str = ""
    eval_split: Literal["test", "all"] = "test"
    cardiofm_version: str = ""

    @field_validator("teacher_filters", "student_depths", "student_num_heads", mode="before")
    @classmethod
    def _int_lists(cls, value: object) -> object:
        return _int_tuple(value)

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = (*TASKS, *DOWNSTREAM_TASKS)
        unknown = [t for t in value if t not in known]
        if unknown or not value:
            raise ValueError(f"must be a non-empty comma-separated subset of {list(known)}, got {list(value)}")
        return value

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        if value in PLAIN_STAGES:
            return value
        if value.startswith(TEACHER_PREFIX):
            task = value.removeprefix(TEACHER_PREFIX)
            if task in TASKS:
                return value
            close = difflib.get_close_matches(task, TASKS, n=1, cutoff=0.5)
            hint = f" (did you mean 'teacher:{close[0]}'?)" if close else ""
            raise ValueError(f"unknown teacher task {task!r}{hint}; known tasks: {list(TASKS)}")
        choices = [*(TEACHER_PREFIX + t for t in TASKS), *PLAIN_STAGES]
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown stage {value!r}{hint}; known: {choices}")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.strategy == "fedprox" and self.proximal_mu <= 0:
            raise ValueError("strategy 'fedprox' needs proximal-mu > 0 (e.g. 0.01)")
        downstream = [t for t in self.tasks if t in DOWNSTREAM_TASKS]
        if downstream and self.stage not in ("finetune", "evaluate"):
            raise ValueError(f"tasks: downstream task(s) {downstream} are only for finetune and evaluate")
        if self.stage in ("finetune", "evaluate") and not self.init_checkpoint:
            raise ValueError(f"stage {self.stage!r} needs init-checkpoint (the model to start from)")
        if not self.out_dir or not Path(self.out_dir).is_absolute():
            raise ValueError("out-dir must be an absolute folder on the coordinator (round checkpoints, summary)")
        if self.init_checkpoint and not Path(self.init_checkpoint).is_absolute():
            raise ValueError("init-checkpoint must be an absolute path on the coordinator")
        return self

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> Self:
        """Parse Flower's ``context.run_config`` (kebab-case keys).

        Raises
        ------
        ConfigError
            For an unknown key (with a did-you-mean hint) or an invalid value, naming the key.
        """
        values = _parse_flat(cls, run_config, "run config")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise _config_error(exc, "run config") from exc

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """The flat kebab-case mapping Flower carries (lists as comma-separated text); inverse of parsing."""
        out: dict[str, bool | int | float | str] = {}
        for name, value in self.model_dump(mode="python").items():
            if isinstance(value, tuple):
                out[_kebab(name)] = ",".join(str(v) for v in value)
            else:
                out[_kebab(name)] = value
        return out

    @property
    def stage_kind(self) -> StageKind:
        """``teacher``, ``distill``, ``finetune`` or ``evaluate``."""
        if self.stage.startswith(TEACHER_PREFIX):
            return "teacher"
        kind: StageKind = self.stage  # type: ignore[assignment]  # validated: one of PLAIN_STAGES
        return kind

    @property
    def stage_tasks(self) -> tuple[str, ...]:
        """Tasks this stage trains or evaluates (a teacher stage: its one task)."""
        if self.stage_kind == "teacher":
            return (self.stage.removeprefix(TEACHER_PREFIX),)
        return self.tasks

    @property
    def stage_slug(self) -> str:
        """The stage as a file-name part: ``teacher-landmarks``, ``distill``, ..."""
        return self.stage.replace(":", "-")


class SiteNodeConfig(BaseModel):
    """What a site's SuperNode tells its ClientApp (``flower-supernode --node-config``).

    Attributes
    ----------
    dataset
        The site dataset folder (``manifest.json`` + ``cases/``), read only.
    work_dir
        Site-local folder for everything the federation leaves at the site: received global models
        (``models/``), pseudo-labels (``pseudo-labels/``), scratch checkpoints, the done marker.
    site_name
        Optional display name for the site's own logs; never sent to the coordinator.
    worker_socket, worker_key_file
        The site worker's socket and key file (:mod:`cardiofm.federated.site_worker`), set by ``site join``;
        empty: the ClientApp does the work in its own process.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: Path
    work_dir: Path
    site_name: str = ""
    worker_socket: str = ""
    worker_key_file: str = ""

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> Self:
        """Parse Flower's ``context.node_config`` (kebab-case keys).

        Raises
        ------
        ConfigError
            For a missing or unknown key, naming it and showing the expected ``--node-config`` form.
        """
        values = _parse_flat(cls, node_config, "node config")
        missing = [_kebab(n) for n in ("dataset", "work_dir") if n not in values]
        if missing:
            raise ConfigError(
                f"node config lacks {missing}; start the SuperNode with "
                '--node-config \'dataset="<dataset folder>" work-dir="<site work folder>"\''
            )
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise _config_error(exc, "node config") from exc


def check_version(run: FederatedRunConfig) -> None:
    """Refuse a run built for another cardiofm version (app bundle and installed package must match).

    Raises
    ------
    ConfigError
        If ``cardiofm-version`` is set and differs from the installed version.
    """
    if run.cardiofm_version and run.cardiofm_version != __version__:
        raise ConfigError(
            f"the run was built for cardiofm {run.cardiofm_version}, this installation is {__version__}; "
            "install the consortium's release here or rebuild the app bundle"
        )
