"""Losses: partial-label multi-head segmentation loss (CE + soft Dice, deep supervision) and distillation.

Partial labels: a site (or a batch item) has labels for some tasks only. A head's loss is computed on
the batch items that carry its label and nothing else, so an unlabelled item contributes exactly zero
and sends exactly zero gradient into that head; a head without any labelled item in the batch is left
out of the graph (its parameters get ``grad is None``). Head losses are summed with fixed task weights
(not averaged over the heads present), so a head's gradient does not depend on which other tasks happen
to be labelled in the same batch.

Deep supervision weights are 1, ½, ¼, ... normalised to sum to 1 (reference defect §10 item 22).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cardiofm.constants import IGNORE_LABEL
from cardiofm.errors import ConfigError, InputDataError, LabelError

logger = logging.getLogger(__name__)

TargetDownsample = Literal["nearest", "foreground"]


def deep_supervision_weights(n: int) -> list[float]:
    """Weights 1, ½, ¼, ... for ``n`` outputs (finest first), normalised to sum 1."""
    if n < 1:
        raise ConfigError(f"need at least one output, got {n}")
    raw = [0.5**i for i in range(n)]
    total = sum(raw)
    return [w / total for w in raw]


def downsample_labels(target: Tensor, size: Sequence[int], mode: TargetDownsample = "nearest") -> Tensor:
    """Integer label map (B, 1, X, Y, Z) → (B, 1, *size).

    ``nearest`` samples one voxel per output voxel (nnU-Net). ``foreground`` keeps any foreground in the
    pooled window (majority foreground class wins), so small landmark spheres survive at ¼ resolution;
    it needs integer downsampling factors.
    """
    if tuple(target.shape[2:]) == tuple(size):
        return target
    if mode == "nearest":
        return F.interpolate(target.float(), size=tuple(size), mode="nearest").long()
    factors = [s // o for s, o in zip(target.shape[2:], size, strict=True)]
    if any(f * o != s for f, o, s in zip(factors, size, target.shape[2:], strict=True)):
        raise InputDataError(f"cannot pool labels {tuple(target.shape[2:])} → {tuple(size)} by an integer factor")
    ignored = target == IGNORE_LABEL
    labels = torch.where(ignored, torch.zeros_like(target), target)
    n_classes = int(labels.max()) + 1
    onehot = F.one_hot(labels[:, 0].long(), n_classes).permute(0, 4, 1, 2, 3).float()
    counts = F.avg_pool3d(onehot, kernel_size=factors, stride=factors)
    any_fg = counts[:, 1:].sum(dim=1, keepdim=True) > 0
    if n_classes > 1:
        counts[:, :1] = torch.where(any_fg, torch.full_like(counts[:, :1], -1.0), counts[:, :1])
    pooled = counts.argmax(dim=1, keepdim=True)
    # a window with ignored voxels and no foreground is ignored: it is not known to be background
    any_ignored = F.max_pool3d(ignored.float(), kernel_size=factors, stride=factors) > 0
    return torch.where(any_ignored & ~any_fg, torch.full_like(pooled, IGNORE_LABEL), pooled)


def dice_ce(logits: Tensor, target: Tensor, smooth: float = 1e-5) -> Tensor:
    """Cross-entropy + soft Dice (softmax, background excluded, batch Dice) of one output.

    Voxels labelled :data:`~cardiofm.constants.IGNORE_LABEL` take part in neither term.

    Parameters
    ----------
    logits
        (N, C, X, Y, Z) float.
    target
        (N, 1, X, Y, Z) integer labels in 0..C-1, or ``IGNORE_LABEL``.
    smooth
        Added to numerator and denominator of each class's Dice (an absent class predicted absent → loss 0).

    Returns
    -------
    Tensor
        Scalar: mean CE over voxels + (1 - mean foreground Dice).
    """
    logits = logits.float()
    labels = target[:, 0].long()
    valid = labels != IGNORE_LABEL
    if not bool(valid.any()):
        return logits.sum() * 0.0  # nothing known in this output: no loss, still differentiable
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL)
    n_classes = logits.shape[1]
    if n_classes < 2:
        return ce
    keep = valid[:, None].to(logits.dtype)
    probs = torch.softmax(logits, dim=1)[:, 1:] * keep
    known = torch.where(valid, labels, torch.zeros_like(labels))
    onehot = F.one_hot(known, n_classes).permute(0, 4, 1, 2, 3)[:, 1:].to(probs.dtype) * keep
    dims = (0, 2, 3, 4)  # batch Dice: sum over items and voxels per class
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return ce + (1.0 - dice.mean())


class MaskedMultiHeadLoss(nn.Module):
    """Sum over heads of deep-supervised CE + Dice, each head on its labelled batch items only.

    Parameters
    ----------
    tasks
        Heads to train (others in the model output are ignored); None: every head in the output.
    task_weights
        Optional fixed weight per task (default 1).
    smooth
        Dice smoothing.
    target_downsample
        How targets are brought to the resolution of deep-supervision outputs (see :func:`downsample_labels`).
    """

    def __init__(
        self,
        tasks: Iterable[str] | None = None,
        task_weights: Mapping[str, float] | None = None,
        smooth: float = 1e-5,
        target_downsample: TargetDownsample = "nearest",
    ) -> None:
        super().__init__()
        self.tasks = tuple(tasks) if tasks is not None else None
        self.task_weights = dict(task_weights or {})
        if any(w < 0 for w in self.task_weights.values()):
            raise ConfigError(f"task weights must be >= 0, got {self.task_weights}")
        self.smooth = smooth
        self.target_downsample: TargetDownsample = target_downsample

    def forward(
        self,
        outputs: Mapping[str, Sequence[Tensor]],
        targets: Mapping[str, Tensor],
        has_label: Mapping[str, Tensor],
    ) -> tuple[Tensor, dict[str, float]]:
        """Total loss and per-task values.

        Parameters
        ----------
        outputs
            ``{task: [logits (B, C, X, Y, Z) full resolution, then ½, ¼ ...]}`` as models return them.
        targets
            ``{task: (B, 1, X, Y, Z) integer labels}``; entries of unlabelled items are never read.
        has_label
            ``{task: (B,) bool}``: which items carry the task's label. A missing task means none.

        Returns
        -------
        tuple[Tensor, dict[str, float]]
            The scalar total (always differentiable: if no head has a label it is a zero connected to the
            outputs) and ``{task: head loss}`` for the heads that had at least one labelled item.
        """
        tasks = self.tasks if self.tasks is not None else tuple(outputs)
        missing = [t for t in tasks if t not in outputs]
        if missing:
            raise ConfigError(f"no model output for task(s) {missing}; outputs: {sorted(outputs)}")
        total: Tensor | None = None
        per_task: dict[str, float] = {}
        for task in tasks:
            preds = outputs[task]
            if len(preds) == 0:
                raise ConfigError(f"model output for {task!r} is empty")
            batch = preds[0].shape[0]
            mask = has_label.get(task)
            if mask is None:
                continue
            mask = mask.reshape(-1).to(device=preds[0].device, dtype=torch.bool)
            if mask.numel() != batch:
                raise InputDataError(f"has_label[{task!r}] has {mask.numel()} entries for a batch of {batch}")
            if not bool(mask.any()):
                continue
            if task not in targets:
                raise InputDataError(f"items are marked as labelled for {task!r} but no target was given")
            target = targets[task]
            if target.shape[0] != batch or target.shape[1] != 1 or target.shape[2:] != preds[0].shape[2:]:
                raise InputDataError(
                    f"target {task!r} has shape {tuple(target.shape)}; expected (B, 1, *{tuple(preds[0].shape[2:])})"
                )
            head_loss = self._head_loss(task, preds, target, mask)
            weighted = self.task_weights.get(task, 1.0) * head_loss
            total = weighted if total is None else total + weighted
            per_task[task] = float(head_loss.detach())
        if total is None:
            logger.debug("no labelled item for any of %s in this batch; loss is zero", tasks)
            anchor = next(iter(outputs[t][0] for t in tasks), None) if tasks else None
            total = anchor.sum() * 0.0 if anchor is not None else torch.zeros(())
        return total, per_task

    def _head_loss(self, task: str, preds: Sequence[Tensor], target: Tensor, mask: Tensor) -> Tensor:
        index = mask.nonzero().reshape(-1)
        labels = target.index_select(0, index.to(target.device))
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise InputDataError(f"target {task!r} must hold integer labels, got {labels.dtype}")
        labels = labels.long()
        n_classes = preds[0].shape[1]
        known = labels[labels != IGNORE_LABEL]
        if known.numel() and (int(known.min()) < 0 or int(known.max()) >= n_classes):
            raise LabelError(
                f"target {task!r} holds labels {int(known.min())}..{int(known.max())}; head has {n_classes} classes"
            )
        weights = deep_supervision_weights(len(preds))
        loss: Tensor | None = None
        for weight, logits in zip(weights, preds, strict=True):
            sub = logits.index_select(0, index.to(logits.device))
            lab = downsample_labels(labels, sub.shape[2:], self.target_downsample).to(sub.device)
            term = weight * dice_ce(sub, lab, self.smooth)
            loss = term if loss is None else loss + term
        assert loss is not None
        return loss


KDBalance = Literal["class", "voxel"]


def distillation_loss(
    student_logits: Tensor,
    teacher_probs: Tensor,
    temperature: float,
    confidence_mask: Tensor | None = None,
    balance: KDBalance = "class",
) -> Tensor:
    """KL(teacher ‖ student) at temperature T, times T², over confident voxels.

    The teacher's probabilities are softened as p_T ∝ p^(1/T) (= softmax(log p / T)); the student's as
    softmax(z / T).

    With ``balance="class"`` (default) every voxel belongs to the teacher's most probable class; the KL is
    averaged within each class present among the selected voxels (pooled over the batch) and these class
    means are averaged, so each structure the teacher sees weighs as much as the background. A plain
    voxel mean (``balance="voxel"``) is dominated by background wherever the structures are small (a
    4 mm landmark sphere is ~30 of 262,144 voxels of a 64³ patch at 2 mm): the student then learns to
    copy the teacher's background and nothing else.

    Parameters
    ----------
    student_logits
        (B, C, X, Y, Z) logits.
    teacher_probs
        (B, C, X, Y, Z) probabilities (summing to 1 over C).
    temperature
        T > 0.
    confidence_mask
        (B, X, Y, Z) or (B, 1, X, Y, Z) bool: voxels to use; None uses all.
    balance
        ``class``: mean over the teacher's classes of the mean KL of their voxels; ``voxel``: mean over voxels.

    Returns
    -------
    Tensor
        Scalar; zero (still differentiable) when no voxel is selected.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if balance not in ("class", "voxel"):
        raise ConfigError(f"unknown distillation balance {balance!r}; known: ['class', 'voxel']")
    if student_logits.shape != teacher_probs.shape:
        raise InputDataError(
            f"student logits {tuple(student_logits.shape)} and teacher probabilities "
            f"{tuple(teacher_probs.shape)} differ"
        )
    logits = student_logits.float()
    teacher = teacher_probs.float().clamp_min(0.0)
    log_q = torch.log_softmax(logits / temperature, dim=1)
    p_t = torch.softmax(torch.log(teacher.clamp_min(1e-12)) / temperature, dim=1).detach()
    kl = (torch.xlogy(p_t, p_t) - p_t * log_q).sum(dim=1)  # (B, X, Y, Z)
    if confidence_mask is None:
        mask = torch.ones_like(kl, dtype=torch.bool)
    else:
        mask = confidence_mask.to(device=kl.device, dtype=torch.bool)
        if mask.ndim == kl.ndim + 1 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if mask.shape != kl.shape:
            raise InputDataError(
                f"confidence mask {tuple(confidence_mask.shape)} does not match voxels {tuple(kl.shape)}"
            )
    if not bool(mask.any()):
        return logits.sum() * 0.0
    if balance == "voxel":
        return torch.where(mask, kl, torch.zeros_like(kl)).sum() / mask.sum() * temperature**2
    n_classes = teacher.shape[1]
    owner = F.one_hot(teacher.argmax(dim=1), n_classes).to(kl.dtype) * mask[..., None].to(kl.dtype)
    owner = owner.reshape(-1, n_classes)  # (voxels, C): one-hot teacher class of each selected voxel
    counts = owner.sum(dim=0)
    sums = (kl.reshape(-1, 1) * owner).sum(dim=0)
    present = counts > 0
    return (sums[present] / counts[present]).mean() * temperature**2
