"""Typed model configuration: which network, which heads, how the input is built.

No torch import here, so configs can be validated (and stored in checkpoints or site files) in images
without torch. :func:`cardiofm.models.registry.build_model` turns a :class:`ModelConfig` into a module.

The configuration is plain data kept next to the weights (never stored as model buffers, which FedAvg
would average; reference defect §10 item 23).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, field_validator, model_validator

from cardiofm.constants import HEART_LABELS, TASK_LANDMARKS, TASKS
from cardiofm.errors import ConfigError

ModelName = Literal["resunet-teacher", "swinunetr-student"]
HeartConditioning = Literal["none", "onehot", "scaled"]

MODEL_NAMES: Final[tuple[str, ...]] = get_args(ModelName)
TEACHER: Final[str] = "resunet-teacher"
STUDENT: Final[str] = "swinunetr-student"

#: Number of heart classes including background (bg + 7 :data:`~cardiofm.constants.HEART_LABELS`).
HEART_CLASSES: Final[int] = 1 + len(HEART_LABELS)

#: Output channels of every head a model can have (channel 0 is background).
HEAD_CHANNELS: Final[dict[str, int]] = {
    "landmarks": 1 + len(TASK_LANDMARKS["landmarks"]),
    "septum": 1 + len(TASK_LANDMARKS["septum"]),
    "calcification": 2,
    "heart": HEART_CLASSES,
    "coronaries": 2,
}

#: Heads of the distilled student: one per foundation task (the optional ``heart`` head and downstream heads
#: such as ``coronaries``, see :data:`~cardiofm.constants.DOWNSTREAM_TASKS`, are added explicitly).
STUDENT_HEADS: Final[dict[str, int]] = {task: HEAD_CHANNELS[task] for task in TASKS}

#: Input channels per heart-conditioning mode: the CT plus none / one-hot (bg + 7 classes) / one scaled channel.
_IN_CHANNELS: Final[dict[str, int]] = {"none": 1, "onehot": 1 + HEART_CLASSES, "scaled": 2}

#: Spatial divisor of the student's input (SwinUNETR: patch size 2, four patch mergings: 2**5).
STUDENT_DIVISOR: Final[int] = 32


def default_heads(task: str) -> dict[str, int]:
    """Heads of a task teacher: exactly one, for ``task``.

    Parameters
    ----------
    task
        One of :data:`~cardiofm.constants.TASKS`, :data:`~cardiofm.constants.DOWNSTREAM_TASKS` or ``heart``.

    Returns
    -------
    dict[str, int]
        ``{task: output channels}``.

    Raises
    ------
    ConfigError
        For an unknown task (with a did-you-mean suggestion).
    """
    if task not in HEAD_CHANNELS:
        raise ConfigError(f"unknown task {task!r}{_suggest(task, HEAD_CHANNELS)}; known: {sorted(HEAD_CHANNELS)}")
    return {task: HEAD_CHANNELS[task]}


def _suggest(word: str, choices: Mapping[str, object] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ModelConfig(BaseModel):
    """One model: architecture name, input conditioning, heads and size.

    Attributes
    ----------
    name
        ``resunet-teacher`` (MONAI DynUNet, residual blocks, nnU-Net-like, one task head, deep supervision)
        or ``swinunetr-student`` (MONAI SwinUNETR backbone + one 1×1×1 head per task).
    heart_conditioning
        How a heart label map (0..7) is added to the CT channel: ``none`` (CT only), ``onehot`` (8 extra
        channels) or ``scaled`` (one extra channel, labels / 7). Never raw integers (defect §10 item 28).
    heads
        Task → output channels (background included). Defaults: :data:`STUDENT_HEADS` for the student;
        a teacher must name its one task (use :func:`default_heads` or :meth:`teacher`).
    feature_size
        SwinUNETR embedding size (student); divisible by 12.
    depths
        Student only: Swin transformer blocks per stage (four stages; default (2, 2, 2, 2) as in SwinUNETR;
        e.g. (1, 1, 1, 1) for a cheap CPU test model).
    num_heads
        Student only: attention heads per stage; ``feature_size * 2**stage`` must be divisible by each.
    filters
        DynUNet filters per level (teacher); strides are 1 then 2 for every further level.
    deep_supervision
        Teacher only: extra heads at ½ and ¼ resolution in training mode.
    use_checkpoint
        Gradient checkpointing (less memory, more compute).
    dropout
        Dropout rate in [0, 1).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ModelName
    heart_conditioning: HeartConditioning = "none"
    heads: dict[str, int] = Field(default_factory=dict)
    feature_size: int = Field(default=24, gt=0)
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    num_heads: tuple[int, int, int, int] = (3, 6, 12, 24)
    filters: tuple[int, ...] = (32, 64, 128, 256, 320)
    deep_supervision: bool = True
    use_checkpoint: bool = False
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @classmethod
    def teacher(cls, task: str, **kwargs: Any) -> ModelConfig:
        """Config of the task teacher for ``task`` (other fields as keyword arguments)."""
        return cls(name="resunet-teacher", heads=default_heads(task), **kwargs)

    @classmethod
    def student(cls, **kwargs: Any) -> ModelConfig:
        """Config of the multi-head student (default heads :data:`STUDENT_HEADS`)."""
        return cls(name="swinunetr-student", **kwargs)

    def with_heads(self, tasks: tuple[str, ...]) -> ModelConfig:
        """A copy with a head added for each of ``tasks`` it lacks (e.g. a downstream head to fine-tune).

        Parameters
        ----------
        tasks
            Head names; those already present are kept as they are.

        Returns
        -------
        ModelConfig
            A validated copy (heads in the old order, new ones appended).

        Raises
        ------
        ConfigError
            For an unknown task, or a teacher that would get a second head.
        """
        missing = {t: default_heads(t)[t] for t in tasks if t not in self.heads}
        if not missing:
            return self
        return load_model_config({**self.model_dump(mode="json"), "heads": {**self.heads, **missing}})

    @field_validator("name", mode="before")
    @classmethod
    def _known_name(cls, value: object) -> object:
        if isinstance(value, str) and value not in MODEL_NAMES:
            raise ValueError(f"unknown model {value!r}{_suggest(value, MODEL_NAMES)}; known: {list(MODEL_NAMES)}")
        return value

    @field_validator("feature_size")
    @classmethod
    def _feature_size(cls, value: int) -> int:
        if value % 12:
            raise ValueError(f"feature_size must be divisible by 12 (SwinUNETR), got {value}")
        return value

    @field_validator("depths", "num_heads")
    @classmethod
    def _positive_stages(cls, value: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        if any(v <= 0 for v in value):
            raise ValueError(f"every stage needs at least 1 (block / head), got {value}")
        return value

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) < 4:
            raise ValueError(f"filters needs at least 4 levels (deep supervision at ½ and ¼), got {len(value)}")
        if any(f <= 0 for f in value):
            raise ValueError(f"filters must be positive, got {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _defaults_and_derived(cls, data: Any) -> Any:
        """Fill the student's default heads; accept a stored ``in_channels`` (from ``model_dump``) if it matches."""
        if not isinstance(data, Mapping):
            return data
        fields = dict(data)
        if not fields.get("heads") and fields.get("name") == STUDENT:
            fields["heads"] = dict(STUDENT_HEADS)
        if "in_channels" in fields:
            stored = fields.pop("in_channels")
            conditioning = fields.get("heart_conditioning", "none")
            expected = _IN_CHANNELS.get(conditioning) if isinstance(conditioning, str) else None
            if expected is not None and stored != expected:
                raise ValueError(
                    f"in_channels {stored!r} does not match heart_conditioning {conditioning!r} ({expected}); "
                    "in_channels is derived, leave it out"
                )
        return fields

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if not self.heads:
            raise ValueError(
                f"{self.name} needs heads; a teacher has one task head, e.g. heads={default_heads('landmarks')}"
            )
        for task, channels in self.heads.items():
            if task not in HEAD_CHANNELS:
                raise ValueError(
                    f"unknown head {task!r}{_suggest(task, HEAD_CHANNELS)}; known: {sorted(HEAD_CHANNELS)}"
                )
            if channels != HEAD_CHANNELS[task]:
                raise ValueError(
                    f"head {task!r} has {HEAD_CHANNELS[task]} output channels (background included), got {channels}"
                )
        if self.name == TEACHER and len(self.heads) != 1:
            raise ValueError(f"a teacher has exactly one task head, got {sorted(self.heads)}")
        for stage, heads in enumerate(self.num_heads):
            if (self.feature_size * 2**stage) % heads:
                raise ValueError(
                    f"num_heads[{stage}]={heads} does not divide the stage's embedding size "
                    f"{self.feature_size * 2**stage} (feature_size * 2**{stage})"
                )
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def in_channels(self) -> int:
        """Input channels: the CT plus the heart conditioning (none 0, onehot 8, scaled 1)."""
        return _IN_CHANNELS[self.heart_conditioning]

    @property
    def tasks(self) -> tuple[str, ...]:
        """Head names in configuration order."""
        return tuple(self.heads)

    @property
    def spatial_divisor(self) -> int:
        """Every spatial input size must be a multiple of this (student 32, teacher 2**(levels - 1))."""
        return STUDENT_DIVISOR if self.name == STUDENT else 2 ** (len(self.filters) - 1)


def load_model_config(data: Mapping[str, Any]) -> ModelConfig:
    """Validate a model config from a mapping (site file, checkpoint, CLI).

    ``in_channels`` is derived; a stored value (``model_dump`` writes it) is accepted only if it matches.

    Raises
    ------
    ConfigError
        With pydantic's message (which includes did-you-mean suggestions for the name and heads).
    """
    try:
        return ModelConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(f"invalid model config: {exc}") from exc
