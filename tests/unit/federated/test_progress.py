"""Per-round progress records: weighted losses, one line per round, tailing a file being written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cardiofm.federated.progress import (
    PROGRESS_FILE,
    ProgressTail,
    append_entry,
    format_entry,
    read_progress,
    round_entry,
)


def test_loss_is_weighted_by_each_sites_examples() -> None:
    metrics = {
        1: {"num-examples": 3, "train-loss": 1.0},
        2: {"num-examples": 1, "train-loss": 2.0},
        3: {"num-examples": 0, "train-loss": 0.0},  # trained nothing: no weight
    }
    entry = round_entry("teacher:landmarks", 2, 5, 4, metrics, 12.345)
    assert entry["loss"] == pytest.approx(1.25)
    assert (entry["round"], entry["rounds"], entry["sites_asked"], entry["sites_answered"]) == (2, 5, 4, 3)
    assert entry["seconds"] == 12.35
    line = format_entry(entry)
    assert line == "teacher:landmarks round 2/5, 3/4 site(s) answered, loss 1.2500, 12.3 s"


def test_evaluation_scores_are_weighted_by_what_each_site_scored() -> None:
    metrics = {
        1: {
            "num-examples": 2,
            "n-landmarks": 10,
            "mean-mm-landmarks": 2.0,
            "n-calcification": 2,
            "dice-calcification": 0.5,
        },
        2: {
            "num-examples": 1,
            "n-landmarks": 5,
            "mean-mm-landmarks": 5.0,
            "n-calcification": 0,
            "dice-calcification": 0.0,
        },
    }
    entry = round_entry("evaluate", 1, 1, 2, metrics, None)
    assert entry["loss"] is None
    assert entry["mean-mm-landmarks"] == pytest.approx(3.0)
    assert entry["dice-calcification"] == pytest.approx(0.5)
    assert "loss -" in format_entry(entry)
    assert "mean-mm-landmarks 3" in format_entry(entry)


def test_no_site_reporting_gives_no_number() -> None:
    assert round_entry("distill", 1, 1, 2, {}, 1.0)["loss"] is None
    assert round_entry("distill", 1, 1, 1, {1: {"num-examples": 2, "train-loss": float("nan")}}, 1.0)["loss"] is None


def test_tail_returns_only_complete_new_lines(tmp_path: Path) -> None:
    tail = ProgressTail(tmp_path)
    assert tail.new_entries() == []  # nothing written yet
    first = round_entry("distill", 1, 2, 1, {1: {"num-examples": 1, "train-loss": 0.5}}, 1.0)
    append_entry(tmp_path, first)
    assert tail.new_entries() == [first]
    with (tmp_path / PROGRESS_FILE).open("a") as out:
        out.write(json.dumps({**first, "round": 2})[:20])  # a line still being written
    assert tail.new_entries() == []
    with (tmp_path / PROGRESS_FILE).open("a") as out:
        out.write(json.dumps({**first, "round": 2})[20:] + "\n")
    assert [e["round"] for e in tail.new_entries()] == [2]
    assert [e["round"] for e in read_progress(tmp_path)] == [1, 2]
