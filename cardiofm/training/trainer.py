"""The training loop.

Seeded; AdamW with warm-up and cosine decay; bf16 autocast on GPU; optional ``torch.compile``; no
exception is swallowed around a step (a broken batch must stop the run).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from cardiofm.errors import ConfigError
from cardiofm.models.config import HeartConditioning, ModelConfig
from cardiofm.training.checkpoint import load_checkpoint, save_checkpoint
from cardiofm.training.config import TrainConfig
from cardiofm.training.data import PatchDataset, Sample, foreground_voxels, load_manifest, load_sample
from cardiofm.training.losses import MaskedMultiHeadLoss, distillation_loss

logger = logging.getLogger(__name__)

Freeze = Literal["none", "backbone", "last-layer"]


@dataclass
class TrainResult:
    """What a run produced."""

    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def mean_loss(self, first: bool, n: int = 10) -> float:
        """Mean total loss of the first (or last) ``n`` steps."""
        values = [h["loss"] for h in self.history]
        part = values[:n] if first else values[-n:]
        return float(np.mean(part)) if part else float("nan")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_for(cfg: TrainConfig, device: torch.device) -> Callable[[], AbstractContextManager[object]]:
    """The autocast context of the configured precision (bf16 on CUDA for ``auto``)."""
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if use_bf16:
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to 1 % of the base learning rate."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(cfg.warmup_steps, 1)
        progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def load_training_samples(
    datasets: list[Path],
    cfg: TrainConfig,
    split: str = "train",
    pseudo_dirs: list[Path] | None = None,
    heart_conditioning: HeartConditioning = "none",
) -> list[Sample]:
    """Every case of ``split`` that holds a label (or, with ``pseudo_dirs``, a pseudo-label) for a trained task.

    ``pseudo_dirs`` pairs with ``datasets`` (one pseudo-label folder per dataset, see
    :mod:`cardiofm.training.pseudolabel`). ``heart_conditioning`` is the model's: unless ``none``, each
    case's heart map is loaded too.
    """
    from cardiofm.training.pseudolabel import attach_pseudolabels

    samples: list[Sample] = []
    for n, root in enumerate(datasets):
        manifest = load_manifest(root)
        pseudo = pseudo_dirs[n] if pseudo_dirs else None
        for case in manifest.cases:
            if case.split != split:
                continue
            if pseudo is None and not set(case.tasks) & set(cfg.tasks):
                continue
            sample = load_sample(root, case, cfg, heart_conditioning)
            if pseudo is not None:
                sample = attach_pseudolabels(sample, case, pseudo, cfg)
                sample.foreground = foreground_voxels(sample.targets)
            if sample.targets or sample.soft:
                samples.append(sample)
    return samples


def _apply_freeze(model: torch.nn.Module, freeze: Freeze, tasks: tuple[str, ...]) -> None:
    from cardiofm.models.registry import freeze_backbone, only_last_layer

    if freeze == "backbone":
        freeze_backbone(model)
    elif freeze == "last-layer":
        for param in model.parameters():  # only the trained tasks' heads stay trainable
            param.requires_grad_(False)
        for task in tasks:
            only_last_layer(model, task)


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    tasks: tuple[str, ...],
    loss_fn: MaskedMultiHeadLoss,
    optimizer: torch.optim.Optimizer,
    autocast: Callable[[], AbstractContextManager[object]],
    cfg: TrainConfig,
    regulariser: Callable[[], torch.Tensor] | None = None,
) -> dict[str, float]:
    """One optimisation step; returns the total and per-task losses (``regulariser`` is added in fp32)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        outputs = model(batch["image"])
        targets = {t: batch[f"target_{t}"] for t in tasks}
        has = {t: batch[f"has_{t}"] for t in tasks}
        total, per_task = loss_fn(outputs, targets, has)
        for t in tasks:
            if f"soft_{t}" in batch and cfg.soft_weight > 0:
                soft = batch[f"soft_{t}"]
                confident = soft.max(dim=1).values >= cfg.min_confidence
                kd = distillation_loss(outputs[t][0], soft, cfg.temperature, confident, cfg.kd_balance)
                total = total + cfg.soft_weight * kd
                per_task[f"kd_{t}"] = float(kd.detach())
    if regulariser is not None:
        reg = regulariser()
        total = total + reg
        per_task["proximal"] = float(reg.detach())
    if not torch.isfinite(total):
        raise FloatingPointError(
            f"non-finite training loss {float(total.detach())}; lower the learning rate or check the data"
        )
    total.backward()
    optimizer.step()
    return {"loss": float(total.detach()), **{k: float(v) for k, v in per_task.items()}}


def _load_partial(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    if unknown:
        raise ConfigError(f"initial weights name {len(unknown)} tensor(s) the model lacks, e.g. {unknown[:3]}")
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ConfigError(f"initial weights have the wrong shape for {bad[:3]}; was the model config changed?")
    model.load_state_dict(dict(state), strict=False)


def _proximal(
    params: list[torch.nn.Parameter], anchor: list[torch.Tensor], mu: float
) -> Callable[[], torch.Tensor] | None:
    if mu <= 0:
        return None

    def term() -> torch.Tensor:
        squares = [((p.float() - a.float()) ** 2).sum() for p, a in zip(params, anchor, strict=True)]
        return 0.5 * mu * torch.stack(squares).sum()

    return term


def _batches(loader: DataLoader[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    yield from loader


def train(
    samples: list[Sample],
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    out: Path,
    *,
    init: Path | None = None,
    init_state: Mapping[str, torch.Tensor] | None = None,
    freeze: Freeze = "none",
    proximal_mu: float = 0.0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train a model for ``cfg.steps`` steps on ``samples`` and write ``out`` (a checkpoint).

    ``init`` (a checkpoint) or ``init_state`` (tensors by name, e.g. the federation's global model; names
    it lacks keep their fresh initialisation) sets the starting weights. ``proximal_mu`` > 0 adds FedProx's
    term ``mu/2 * ||w - w_start||²`` over the trained parameters, which keeps a site near the global model.
    """
    from cardiofm.models.registry import build_model

    missing = [t for t in cfg.tasks if t not in model_cfg.heads]
    if missing:
        raise ConfigError(f"the model has no head for task(s) {missing}; its heads are {list(model_cfg.heads)}")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_model(model_cfg)
    if init is not None:
        ckpt = load_checkpoint(init)
        model.load_state_dict(ckpt.state_dict, strict=False)
    if init_state is not None:
        _load_partial(model, init_state)
    _apply_freeze(model, freeze, cfg.tasks)
    model.to(device).train()
    step_model: torch.nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    loss_fn = MaskedMultiHeadLoss(tasks=cfg.tasks)
    anchor = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    dataset = PatchDataset(samples, cfg, cfg.tasks, heart_conditioning=model_cfg.heart_conditioning)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=cfg.num_workers,
        generator=generator,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )
    autocast = autocast_for(cfg, device)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for step, batch in enumerate(_batches(loader)):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        record = train_step(
            step_model, batch, cfg.tasks, loss_fn, optimizer, autocast, cfg, _proximal(params, anchor, proximal_mu)
        )
        scheduler.step()
        record["step"] = float(step)
        history.append(record)
        if on_step is not None:
            on_step(step, record)
        if step % 25 == 0:
            logger.info("step %d/%d loss %.4f", step, cfg.steps, record["loss"])
    seconds = time.perf_counter() - start
    save_checkpoint(out, model, model_cfg, cfg, history)
    logger.info("trained %d steps in %.1f s; checkpoint %s", len(history), seconds, out.name)
    return TrainResult(checkpoint=out, history=history, seconds=seconds)
