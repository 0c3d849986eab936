"""The release folder: a checkpoint as safetensors weights, typed JSON configs, a model card and a MONAI bundle.

Layout (relative to the release folder)::

    configs/cardiofm.json      model, preprocessing and training config, label names, history, weights sha256
    configs/metadata.json      MONAI bundle metadata        configs/inference.json   MONAI inference config
    configs/meta_schema.json   the metadata's JSON schema (offline verify_metadata)
    models/model.safetensors   weights                      docs/MODEL_CARD.md, docs/README.md, LICENSE

:func:`load_release` gives back the :class:`~cardiofm.training.checkpoint.Checkpoint` that was written, after
checking the weights' sha256; :func:`load_model` takes a checkpoint file or a release folder.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cardiofm import __version__
from cardiofm.contracts.preprocessing import PreprocessingConfig
from cardiofm.errors import InputDataError
from cardiofm.models.config import ModelConfig
from cardiofm.release.card import CardFacts, render_model_card, render_readme
from cardiofm.release.metadata import inference_config, metadata
from cardiofm.training.checkpoint import Checkpoint, load_checkpoint
from cardiofm.training.config import TrainConfig

FORMAT = "cardiofm-release"
FORMAT_VERSION = 1
CONFIG_FILE = "configs/cardiofm.json"
WEIGHTS_FILE = "models/model.safetensors"
METADATA_FILE = "configs/metadata.json"
INFERENCE_FILE = "configs/inference.json"
SCHEMA_FILE = "configs/meta_schema.json"
MODEL_CARD_FILE = "docs/MODEL_CARD.md"
README_FILE = "docs/README.md"
LICENSE_FILE = "LICENSE"

LICENSE_TEXT = """Copyright (c) the cardiofm consortium

Licensed under the Apache License, Version 2.0 (the "License");
you may not use these files except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software and model weights
distributed under the License are distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
"""


class WeightsEntry(BaseModel):
    """The weights file, its sha256 and its tensor names in state-dict order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: Literal["models/model.safetensors"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tensors: list[str]


class ReleaseConfig(BaseModel):
    """``configs/cardiofm.json``: everything besides the weights that builds and runs the model."""

    #: a diverged run's NaN loss in ``history`` is written as ``NaN`` (read back as NaN), not as null
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")

    format: Literal["cardiofm-release"]
    format_version: Literal[1]
    cardiofm_version: str
    created_with: str
    model: ModelConfig
    #: A copy of ``train.preprocessing`` (the one config), at the top level for readers of the file.
    preprocessing: PreprocessingConfig
    train: TrainConfig
    label_names: dict[str, list[str]]
    history: list[dict[str, float]]
    weights: WeightsEntry


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_release(checkpoint: Checkpoint, out_dir: Path, card: CardFacts | None = None) -> Path:
    """Write ``checkpoint`` as a release folder (layout in the module docstring).

    Parameters
    ----------
    checkpoint
        The model to release (e.g. the ``finetune`` stage's ``global.pt``, loaded).
    out_dir
        The release folder; created, and files of the same names in it are replaced.
    card
        Facts for the model card and the bundle metadata (counts and metrics only); default: none recorded.

    Returns
    -------
    Path
        ``out_dir``.
    """
    from safetensors.torch import save_file

    facts = card or CardFacts()
    for sub in ("configs", "models", "docs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in checkpoint.state_dict.items()}
    partial = weights.with_name(weights.name + ".partial")
    save_file(tensors, str(partial), metadata={"format": "pt", "cardiofm_version": __version__})
    partial.replace(weights)
    sha = sha256_of(weights)
    config = ReleaseConfig(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        cardiofm_version=__version__,
        created_with=checkpoint.created_with,
        model=checkpoint.model_config,
        preprocessing=checkpoint.train_config.preprocessing,
        train=checkpoint.train_config,
        label_names=checkpoint.label_names,
        history=checkpoint.history,
        weights=WeightsEntry(file=WEIGHTS_FILE, sha256=sha, tensors=list(tensors)),
    )
    _write_text(out_dir / CONFIG_FILE, config.model_dump_json(indent=2))
    _write_text(out_dir / METADATA_FILE, json.dumps(metadata(checkpoint, facts, SCHEMA_FILE), indent=2))
    _write_text(out_dir / INFERENCE_FILE, json.dumps(inference_config(), indent=2))
    schema = resources.files("cardiofm.release").joinpath("schema/meta_schema.json").read_text(encoding="utf-8")
    _write_text(out_dir / SCHEMA_FILE, schema)
    _write_text(out_dir / MODEL_CARD_FILE, render_model_card(checkpoint, facts, sha))
    _write_text(out_dir / README_FILE, render_readme(checkpoint, facts))
    _write_text(out_dir / LICENSE_FILE, LICENSE_TEXT)
    return out_dir


def _write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    partial.replace(path)


def read_release_config(folder: Path) -> ReleaseConfig:
    """The release's ``configs/cardiofm.json``, validated.

    Raises
    ------
    InputDataError
        If the folder or the file is missing, or the file is not a valid cardiofm release config.
    """
    if not folder.is_dir():
        raise InputDataError(f"release folder {folder.name} not found")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise InputDataError(
            f"release {folder.name} has no {CONFIG_FILE}; copy the whole release folder again "
            "(or pass a checkpoint file instead)"
        )
    try:
        config = ReleaseConfig.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise InputDataError(f"{CONFIG_FILE} of release {folder.name} is not a valid cardiofm release: {exc}") from exc
    if config.preprocessing != config.train.preprocessing:
        raise InputDataError(
            f"{CONFIG_FILE} of release {folder.name} holds two different preprocessing configs; "
            "the file was edited: copy the release again"
        )
    return config


def load_release(folder: Path) -> Checkpoint:
    """Read a release folder written by :func:`write_release` as a :class:`Checkpoint`.

    Raises
    ------
    InputDataError
        Naming the missing or corrupt file: no ``configs/cardiofm.json`` or an invalid one, no weights file,
        weights whose sha256 differs from the recorded one, or weights whose tensors differ from the recorded names.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_release_config(folder)
    weights = folder / config.weights.file
    if not weights.is_file():
        raise InputDataError(f"release {folder.name} has no {config.weights.file}; copy the whole release folder again")
    sha = sha256_of(weights)
    if sha != config.weights.sha256:
        raise InputDataError(
            f"{config.weights.file} of release {folder.name} fails the sha256 check (recorded in {CONFIG_FILE}: "
            f"{config.weights.sha256[:12]}..., file: {sha[:12]}...): the file is corrupt or was changed; "
            "copy the release again"
        )
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputDataError(f"{config.weights.file} of release {folder.name} is not readable safetensors") from exc
    if set(tensors) != set(config.weights.tensors):
        raise InputDataError(
            f"{config.weights.file} of release {folder.name} holds other tensors than {CONFIG_FILE} lists"
        )
    state_dict: dict[str, torch.Tensor] = {name: tensors[name] for name in config.weights.tensors}
    return Checkpoint(
        model_config=config.model,
        train_config=config.train,
        state_dict=state_dict,
        label_names=config.label_names,
        history=config.history,
        created_with=config.created_with,
    )


def is_release(path: Path) -> bool:
    """Whether ``path`` is a folder (a release, or meant to be one) rather than a checkpoint file."""
    return path.is_dir()


def load_model(path: Path) -> Checkpoint:
    """A model from a checkpoint file (``*.pt``) or a release folder, as a :class:`Checkpoint`.

    Raises
    ------
    InputDataError
        If ``path`` is neither a readable checkpoint nor a valid release (the message names the file).
    """
    return load_release(path) if is_release(path) else load_checkpoint(path)
