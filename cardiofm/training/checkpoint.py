"""Model artefacts: weights plus everything needed to use them.

A checkpoint holds the model config, label names, the one PreprocessingConfig, the landmark
encoding, the training config and its history.

Saved with ``torch.save`` as plain dicts and tensors, so loading works with ``weights_only=True``
(no pickled code from a file that may have travelled between sites).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cardiofm import __version__
from cardiofm.constants import TASK_LANDMARKS
from cardiofm.errors import InputDataError
from cardiofm.models.config import ModelConfig
from cardiofm.training.config import TrainConfig

FORMAT = "cardiofm-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded model artefact."""

    model_config: ModelConfig
    train_config: TrainConfig
    state_dict: dict[str, torch.Tensor]
    label_names: dict[str, list[str]]
    history: list[dict[str, float]]
    created_with: str

    def build(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The model with these weights, in eval mode."""
        from cardiofm.models.registry import build_model

        model = build_model(self.model_config)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()


def label_names(tasks: tuple[str, ...]) -> dict[str, list[str]]:
    """Channel names per head (channel 0 is background)."""
    names: dict[str, list[str]] = {}
    for task in tasks:
        names[task] = ["background", *TASK_LANDMARKS[task]] if task in TASK_LANDMARKS else ["background", task]
    return names


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    model_config: ModelConfig,
    train_config: TrainConfig,
    history: list[dict[str, float]],
) -> Path:
    """Write the artefact atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_with": f"cardiofm {__version__}",
        "model_config": model_config.model_dump(mode="json"),
        "train_config": train_config.model_dump(mode="json"),
        "label_names": label_names(tuple(model_config.heads)),
        "history": history,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_suffix(path.suffix + ".part")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """Read an artefact written by :func:`save_checkpoint`; anything else is a clear InputDataError."""
    if not path.is_file():
        raise InputDataError(f"checkpoint {path.name} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise InputDataError(f"{path.name} is not a readable cardiofm checkpoint ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputDataError(f"{path.name} is not a cardiofm checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise InputDataError(
            f"{path.name} has checkpoint format {payload.get('format_version')}; expected {FORMAT_VERSION}"
        )
    return Checkpoint(
        model_config=ModelConfig.model_validate(payload["model_config"]),
        train_config=TrainConfig.model_validate(payload["train_config"]),
        state_dict=payload["state_dict"],
        label_names=payload["label_names"],
        history=payload["history"],
        created_with=payload["created_with"],
    )
