"""The release folder: round trip to a Checkpoint, same predictions, sha256 and missing-file errors, the card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from release_helpers import PATCH, tiny_checkpoint

from cardiofm.errors import InputDataError
from cardiofm.release import CardFacts, GroupMetrics, TaskData, load_model, load_release, write_release
from cardiofm.release.folder import CONFIG_FILE, WEIGHTS_FILE, sha256_of
from cardiofm.release.stage import facts_from_rounds, release_after_stage
from cardiofm.training.checkpoint import Checkpoint
from cardiofm.training.inference import predict_probabilities

CPU = torch.device("cpu")
FACTS = CardFacts(
    data={"landmarks": TaskData(sites=3, cases=42)},
    training_sites=3,
    held_out_sites=1,
    metrics={
        "training_sites_test": GroupMetrics(sites=3, cases=9, metrics={"mean-mm-landmarks": 2.5}),
        "held_out_sites": GroupMetrics(sites=1, metrics={"mean-mm-landmarks": 3.75}),
    },
    phantom_trained=True,
)


@pytest.fixture
def released(tmp_path: Path) -> tuple[Checkpoint, Path]:
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    return ckpt, write_release(ckpt, tmp_path / "release", FACTS)


def test_release_loads_back_the_same_checkpoint(released: tuple[Checkpoint, Path]) -> None:
    ckpt, folder = released
    back = load_release(folder)
    assert list(back.state_dict) == list(ckpt.state_dict)  # same names, same order
    for name, tensor in ckpt.state_dict.items():
        assert back.state_dict[name].dtype == tensor.dtype
        assert torch.equal(back.state_dict[name], tensor), name
    assert back.model_config == ckpt.model_config
    assert back.train_config == ckpt.train_config
    assert back.train_config.preprocessing == ckpt.train_config.preprocessing
    assert back.label_names == ckpt.label_names == {"landmarks": ["background", "RCC", "LCC", "NCC", "RCO", "LCO"]}
    assert back.history == ckpt.history
    assert back.created_with == ckpt.created_with
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["weights"]["sha256"] == sha256_of(folder / WEIGHTS_FILE)
    assert config["preprocessing"] == ckpt.train_config.preprocessing.model_dump(mode="json")
    for name in ("configs/metadata.json", "configs/inference.json", "configs/meta_schema.json", "LICENSE"):
        assert (folder / name).is_file(), name
    assert "Apache License, Version 2.0" in (folder / "LICENSE").read_text()


def test_release_predicts_what_the_checkpoint_predicts(released: tuple[Checkpoint, Path]) -> None:
    ckpt, folder = released
    image = np.random.default_rng(0).normal(size=(20, 18, 17)).astype(np.float32)
    tasks = tuple(ckpt.model_config.heads)
    expected = predict_probabilities(ckpt.build(), image, tasks, PATCH, CPU)
    for model in (load_release(folder), load_model(folder), load_model(folder.parent / "model.pt")):
        got = predict_probabilities(model.build(), image, tasks, PATCH, CPU)
        np.testing.assert_array_equal(got["landmarks"], expected["landmarks"])


def test_tampered_weights_fail_the_sha256_check(released: tuple[Checkpoint, Path]) -> None:
    _, folder = released
    weights = folder / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor's data: still parseable safetensors
    weights.write_bytes(bytes(data))
    with pytest.raises(InputDataError, match=r"models/model\.safetensors .* fails the sha256 check") as info:
        load_model(folder)
    assert "copy the release again" in str(info.value)


@pytest.mark.parametrize("missing", [WEIGHTS_FILE, CONFIG_FILE])
def test_a_missing_file_is_named(released: tuple[Checkpoint, Path], missing: str) -> None:
    _, folder = released
    (folder / missing).unlink()
    with pytest.raises(InputDataError, match=f"release release has no {missing}"):
        load_release(folder)


def test_unusable_config_and_absent_folder_are_clear(released: tuple[Checkpoint, Path]) -> None:
    _, folder = released
    with pytest.raises(InputDataError, match="release folder nowhere not found"):
        load_release(folder.parent / "nowhere")
    (folder / CONFIG_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(InputDataError, match=r"configs/cardiofm\.json of release release is not a valid"):
        load_model(folder)


def test_model_card_has_counts_metrics_use_and_limits(released: tuple[Checkpoint, Path]) -> None:
    _, folder = released
    card = (folder / "docs" / "MODEL_CARD.md").read_text()
    assert "| landmarks | 3 | 42 |" in card
    assert "training sites, their frozen test splits (3 sites, 9 cases)" in card
    assert "held-out sites (never trained on their labels) (1 sites)" in card
    assert "mean-mm-landmarks: 3.75" in card
    assert "not a diagnostic device" in card
    assert "synthetic phantoms only" in card
    assert "contrast-enhanced cardiac CT only" in card
    assert "1 mm" in card
    assert sha256_of(folder / WEIGHTS_FILE) in card
    assert "cardiofm predict --model" in card
    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    assert metadata["eval_metrics"]["held_out_sites"] == {"mean-mm-landmarks": 3.75}
    assert metadata["network_data_format"]["outputs"]["landmarks"]["num_channels"] == 6


def test_finetune_hook_writes_the_release_beside_the_final_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "run-9-finetune"
    ckpt = tiny_checkpoint(run_dir / "global.pt")
    rounds = [
        {"round": 1, "participants": 2, "groups": {"landmarks": {"sites": 1, "examples": 4}}},
        {"round": 2, "participants": 2, "groups": {"landmarks": {"sites": 2, "examples": 7}}},
    ]
    assert facts_from_rounds(rounds).data == {"landmarks": TaskData(sites=2, cases=7)}
    assert facts_from_rounds([]).data == {}
    folder = release_after_stage(run_dir / "global.pt", rounds)
    assert folder == run_dir / "release"
    assert torch.equal(next(iter(load_release(folder).state_dict.values())), next(iter(ckpt.state_dict.values())))
    card = (folder / "docs" / "MODEL_CARD.md").read_text()
    assert "| landmarks | 2 | 7 |" in card
    assert "- training sites: 2" in card
    assert "see the evaluation report" in card
    assert sorted(p.name for p in run_dir.iterdir()) == ["global.pt", "release"]  # nothing else is written


def test_a_diverged_history_survives_the_round_trip(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    ckpt.history = [{"loss": float("nan"), "step": 0.0}, {"loss": float("inf"), "step": 1.0}]
    back = load_release(write_release(ckpt, tmp_path / "release"))
    assert np.isnan(back.history[0]["loss"])
    assert back.history[1] == {"loss": float("inf"), "step": 1.0}
