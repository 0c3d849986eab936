"""Networks: the task teacher (residual DynUNet) and the multi-head SwinUNETR student.

Every model built here follows one contract:

* ``forward(x)`` takes ``x`` of shape (B, C_in, X, Y, Z) and returns ``dict[str, list[Tensor]]``:
  ``{task: [logits at full resolution (B, C_task, X, Y, Z), then ½, ¼ ... in training with deep
  supervision]}``. In eval mode (and for models without deep supervision) each list has one entry.
* Parameter names make the federated aggregation groups obvious: backbone parameters start with
  ``backbone.``, those of a task head with ``heads.<task>.`` (see :func:`parameter_groups`).
* The :class:`~cardiofm.models.config.ModelConfig` is kept as a plain attribute (``model.config``), never
  as buffers, so FedAvg cannot average it (reference defect §10 item 23).

MONAI 1.6.1 notes
-----------------
* ``DynUNet.forward`` in training mode with deep supervision returns ONE stacked tensor
  (B, 1 + deep_supr_num, C, X, Y, Z) whose lower-resolution outputs are nearest-upsampled to full size,
  and it keeps them in a list shared between skip layers. The teacher therefore does not use
  ``DynUNet.forward``: it reuses DynUNet's blocks (``input_block``, ``downsamples``, ``bottleneck``,
  ``upsamples``; same topology as ``DynUNet.skip_layers``, checked by a unit test) and puts its own
  1×1×1 heads on the decoder outputs at full, ½ and ¼ resolution (native sizes, nnU-Net style); the loss
  downsamples the targets instead of upsampling logits.
* ``SwinUNETR`` has no ``img_size`` argument; inputs must be divisible by 32. Its final ``out`` block is
  replaced by ``nn.Identity`` so the backbone returns ``decoder1``'s output (B, feature_size, X, Y, Z),
  on which each task gets one ``UnetOutBlock``.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence
from typing import Final

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.nets.dynunet import DynUNet
from monai.networks.nets.swin_unetr import SwinUNETR
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cardiofm.errors import ConfigError, InputDataError
from cardiofm.models.config import HEART_CLASSES, ModelConfig

logger = logging.getLogger(__name__)

ModelOutput = dict[str, list[Tensor]]

#: Deep-supervision outputs of the teacher below full resolution (½ and ¼).
TEACHER_DEEP_SUPR_NUM: Final[int] = 2
BACKBONE: Final[str] = "backbone"


class MultiHeadModel(nn.Module):
    """Base of every cardiofm network: a ``backbone`` and one entry of ``heads`` per task.

    Subclasses set ``self.backbone`` and ``self.heads`` (an ``nn.ModuleDict`` keyed by task) and implement
    :meth:`forward`.
    """

    backbone: nn.Module
    heads: nn.ModuleDict

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def tasks(self) -> tuple[str, ...]:
        """Head names."""
        return tuple(self.heads.keys())

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`InputDataError` unless ``x`` is (B, in_channels, X, Y, Z) with sizes divisible as required."""
        cfg = self.config
        if x.ndim != 5:
            raise InputDataError(f"{cfg.name} expects input (B, C, X, Y, Z), got shape {tuple(x.shape)}")
        if x.shape[1] != cfg.in_channels:
            raise InputDataError(
                f"{cfg.name} expects {cfg.in_channels} input channel(s) "
                f"(heart_conditioning={cfg.heart_conditioning!r}), got {x.shape[1]}"
            )
        div = cfg.spatial_divisor
        spatial = tuple(int(s) for s in x.shape[2:])
        if any(s % div for s in spatial):
            raise InputDataError(
                f"{cfg.name} needs every spatial size divisible by {div}; got {spatial}. Pad or crop the patch "
                f"(e.g. to {tuple(max(div, -(-s // div) * div) for s in spatial)})"
            )


class ResUNetTeacher(MultiHeadModel):
    """Task teacher: MONAI DynUNet blocks (residual, instance norm, 3³ kernels) with one task head.

    ``heads[task]`` is a ``ModuleList`` of 1×1×1 convolutions: index 0 at full resolution, then ½ and ¼
    (deep supervision, used in training mode only).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        n_levels = len(config.filters)
        net = DynUNet(
            spatial_dims=3,
            in_channels=config.in_channels,
            out_channels=1,  # DynUNet's own output block is not used
            kernel_size=[3] * n_levels,
            strides=[1] + [2] * (n_levels - 1),
            upsample_kernel_size=[2] * (n_levels - 1),
            filters=list(config.filters),
            dropout=config.dropout or None,
            norm_name=("INSTANCE", {"affine": True}),
            deep_supervision=False,
            res_block=True,
        )
        self.backbone = _DynUNetBackbone(net, use_checkpoint=config.use_checkpoint)
        #: Outputs per head in training mode (full resolution, then ½ and ¼ with deep supervision).
        self.n_outputs: int = 1 + (TEACHER_DEEP_SUPR_NUM if config.deep_supervision else 0)
        self.heads = nn.ModuleDict(
            {
                task: nn.ModuleList(UnetOutBlock(3, config.filters[level], channels) for level in range(self.n_outputs))
                for task, channels in config.heads.items()
            }
        )
        self.heads.apply(DynUNet.initialize_weights)

    def forward(self, x: Tensor) -> ModelOutput:
        """Logits per task.

        Parameters
        ----------
        x
            (B, C_in, X, Y, Z), spatial sizes divisible by 2**(levels - 1).

        Returns
        -------
        dict[str, list[Tensor]]
            ``{task: [(B, C, X, Y, Z), (B, C, X/2, Y/2, Z/2), (B, C, X/4, Y/4, Z/4)]}`` in training mode with
            deep supervision, else ``{task: [(B, C, X, Y, Z)]}``.
        """
        self.check_input(x)
        decoded = self.backbone(x)  # full, ½, ¼, ... resolution
        n_out = self.n_outputs if self.training else 1
        out: ModelOutput = {}
        for task, blocks in self.heads.items():
            assert isinstance(blocks, nn.ModuleList)
            out[task] = [blocks[level](decoded[level]) for level in range(n_out)]
        return out


class _DynUNetBackbone(nn.Module):
    """Encoder/decoder of a MONAI DynUNet, returning the decoder feature maps at every resolution.

    Same wiring as ``DynUNet.skip_layers`` (which is not kept, so that no parameter has two names).
    """

    def __init__(self, net: DynUNet, use_checkpoint: bool = False) -> None:
        super().__init__()
        self.input_block = net.input_block
        self.downsamples = net.downsamples
        self.bottleneck = net.bottleneck
        self.upsamples = net.upsamples
        self.use_checkpoint = use_checkpoint

    def _run(self, block: nn.Module, *args: Tensor) -> Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            result = checkpoint(block, *args, use_reentrant=False)
        else:
            result = block(*args)
        assert isinstance(result, Tensor)
        return result

    def forward(self, x: Tensor) -> list[Tensor]:
        """Decoder features, finest first: [(B, f0, X, Y, Z), (B, f1, X/2, Y/2, Z/2), ...] (bottleneck excluded)."""
        skips = [self._run(self.input_block, x)]
        for down in self.downsamples:
            skips.append(self._run(down, skips[-1]))
        h = self._run(self.bottleneck, skips[-1])
        decoded: list[Tensor] = []
        for up, skip in zip(self.upsamples, reversed(skips), strict=True):
            h = self._run(up, h, skip)
            decoded.append(h)
        return decoded[::-1]


class MultiHeadSwinUNETR(MultiHeadModel):
    """Student: MONAI SwinUNETR (``out`` replaced by identity) + one 1×1×1 ``UnetOutBlock`` per task."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        net = SwinUNETR(
            in_channels=config.in_channels,
            out_channels=1,  # replaced below: the heads take decoder1's feature_size channels
            feature_size=config.feature_size,
            depths=config.depths,
            num_heads=config.num_heads,
            drop_rate=config.dropout,
            use_checkpoint=config.use_checkpoint,
            spatial_dims=3,
        )
        net.out = nn.Identity()  # type: ignore[assignment]  # heads replace SwinUNETR's own output block
        self.backbone = net
        self.heads = nn.ModuleDict(
            {task: UnetOutBlock(3, config.feature_size, channels) for task, channels in config.heads.items()}
        )

    def forward(self, x: Tensor) -> ModelOutput:
        """Logits per task.

        Parameters
        ----------
        x
            (B, C_in, X, Y, Z), spatial sizes divisible by 32 (64³ is the smallest trainable size).

        Returns
        -------
        dict[str, list[Tensor]]
            ``{task: [(B, C_task, X, Y, Z)]}`` (no deep supervision).
        """
        self.check_input(x)
        features = self.backbone(x)
        return {task: [head(features)] for task, head in self.heads.items()}


ModelFactory = Callable[[ModelConfig], MultiHeadModel]

#: Model name → constructor.
MODEL_REGISTRY: Final[dict[str, ModelFactory]] = {
    "resunet-teacher": ResUNetTeacher,
    "swinunetr-student": MultiHeadSwinUNETR,
}


def build_model(cfg: ModelConfig) -> MultiHeadModel:
    """Instantiate the network named by ``cfg.name``.

    Raises
    ------
    ConfigError
        For a name not in :data:`MODEL_REGISTRY` (with a did-you-mean suggestion).
    """
    factory = MODEL_REGISTRY.get(cfg.name)
    if factory is None:
        close = difflib.get_close_matches(str(cfg.name), list(MODEL_REGISTRY), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {cfg.name!r}{hint}; known: {sorted(MODEL_REGISTRY)}")
    model = factory(cfg)
    logger.debug("built %s with %d parameters", cfg.name, count_parameters(model))
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def group_of(name: str) -> str:
    """Aggregation group of a state-dict name: ``backbone`` or the task of its head (``heads.<task>.…``)."""
    if name.startswith(BACKBONE + "."):
        return BACKBONE
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "heads":
        return parts[1]
    raise ConfigError(f"parameter {name!r} is neither under 'backbone.' nor 'heads.<task>.'")


def parameter_groups(model: nn.Module, include_buffers: bool = False) -> dict[str, list[str]]:
    """Names grouped for federated aggregation: ``backbone`` and one group per task head.

    A head's group is meant to be aggregated only over the sites that trained that head.

    Parameters
    ----------
    model
        A model built by :func:`build_model` (or any module following the naming contract).
    include_buffers
        Group every ``state_dict`` key (parameters and persistent buffers) instead of ``named_parameters``.

    Returns
    -------
    dict[str, list[str]]
        ``{"backbone": [...], task: [...], ...}``; every name is in exactly one group.
    """
    names = list(model.state_dict().keys()) if include_buffers else [n for n, _ in model.named_parameters()]
    groups: dict[str, list[str]] = {BACKBONE: []}
    heads = getattr(model, "heads", None)
    if isinstance(heads, nn.ModuleDict):
        groups.update({task: [] for task in heads})
    for name in names:
        groups.setdefault(group_of(name), []).append(name)
    return groups


def freeze_backbone(model: nn.Module) -> list[str]:
    """Set ``requires_grad=False`` on every backbone parameter (head fine-tuning).

    Returns
    -------
    list[str]
        Names of the parameters that remain trainable.
    """
    for name, param in model.named_parameters():
        if group_of(name) == BACKBONE:
            param.requires_grad_(False)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def only_last_layer(model: nn.Module, task: str) -> list[str]:
    """Freeze the backbone and make the head of ``task`` (its 1×1×1 convolution(s)) trainable.

    Other heads keep their current ``requires_grad``, so calling it for several tasks in turn leaves each
    of those heads trainable; heads that get no loss receive no gradient (``grad is None``) anyway.
    To train exactly one head, set every ``requires_grad`` to False first.

    Raises
    ------
    ConfigError
        If the model has no head ``task``.
    """
    heads = getattr(model, "heads", None)
    if not isinstance(heads, nn.ModuleDict) or task not in heads:
        known = list(heads.keys()) if isinstance(heads, nn.ModuleDict) else []
        close = difflib.get_close_matches(task, known, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"model has no head {task!r}{hint}; heads: {known}")
    for name, param in model.named_parameters():
        group = group_of(name)
        if group == BACKBONE:
            param.requires_grad_(False)
        elif group == task:
            param.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def conditioned_input(image: Tensor, heart: Tensor | None, mode: str) -> Tensor:
    """Build the network input from the CT and an optional heart label map.

    Parameters
    ----------
    image
        (B, 1, X, Y, Z) float, normalised CT.
    heart
        (B, 1, X, Y, Z) integer heart labels 0..7 on the same grid, or None for ``mode="none"``.
    mode
        ``none`` → (B, 1, ...); ``onehot`` → (B, 1 + 8, ...); ``scaled`` → (B, 2, ...) with labels / 7.

    Raises
    ------
    InputDataError
        For mismatched shapes, non-integer or out-of-range labels.
    ConfigError
        For an unknown mode or a heart map missing for a conditioned mode.
    """
    if mode == "none":
        return image
    if mode not in ("onehot", "scaled"):
        raise ConfigError(f"unknown heart_conditioning {mode!r}; known: ['none', 'onehot', 'scaled']")
    if heart is None:
        raise ConfigError(f"heart_conditioning={mode!r} needs a heart label map")
    if heart.shape != image.shape or image.shape[1] != 1:
        raise InputDataError(f"heart map {tuple(heart.shape)} and CT {tuple(image.shape)} must both be (B, 1, X, Y, Z)")
    if heart.is_floating_point() or heart.dtype == torch.bool:
        raise InputDataError(f"heart map must hold integer labels, got {heart.dtype}")
    if heart.numel() and (int(heart.min()) < 0 or int(heart.max()) >= HEART_CLASSES):
        raise InputDataError(f"heart labels must lie in 0..{HEART_CLASSES - 1}")
    if mode == "scaled":
        extra = heart.to(image.dtype) / float(HEART_CLASSES - 1)
    else:
        onehot = nn.functional.one_hot(heart[:, 0].long(), HEART_CLASSES)  # (B, X, Y, Z, 8)
        extra = onehot.permute(0, 4, 1, 2, 3).to(image.dtype)
    return torch.cat([image, extra], dim=1)


def head_parameters(model: nn.Module, tasks: Sequence[str]) -> list[nn.Parameter]:
    """Parameters of the given heads (e.g. for a separate optimiser group)."""
    wanted = set(tasks)
    return [p for n, p in model.named_parameters() if group_of(n) in wanted]
