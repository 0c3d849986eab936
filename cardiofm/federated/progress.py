"""Round-by-round progress of a federated stage: one JSON line per round, written as the round ends.

The ServerApp appends to ``<run folder>/progress.jsonl`` after every aggregation (and after an evaluate-only
stage's exchange); whoever launched the run (the loopback demo, a coordinator's shell) tails it. Each line
holds numbers only: stage, round, sites asked and answered, the example-weighted mean training loss of the
answering sites (or their mean evaluation scores) and the round's seconds; never a case, a path or a name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cardiofm.federated.aggregation import MetricMean

logger = logging.getLogger(__name__)

PROGRESS_FILE: Final[str] = "progress.jsonl"
#: Evaluation scores a round's line carries (weighted by the points or cases each site scored).
SCORE_PREFIXES: Final[tuple[str, ...]] = ("mean-mm-", "failure-rate-", "dice-")


def round_entry(
    stage: str,
    number: int,
    total_rounds: int,
    sent: int,
    metrics: Mapping[int, Mapping[str, Any]],
    seconds: float | None,
) -> dict[str, Any]:
    """One round's progress record from the answering sites' metric records (node id → record)."""
    mean = MetricMean()  # the same weighting as the stage summary: losses by examples, scores by their counts
    for record in metrics.values():
        mean.add(record)
    result = mean.result()
    loss = result.get("train-loss")
    entry: dict[str, Any] = {
        "stage": stage,
        "round": number,
        "rounds": total_rounds,
        "sites_asked": sent,
        "sites_answered": len(metrics),
        "loss": None if loss is None else float(loss),
        "seconds": None if seconds is None else round(seconds, 2),
    }
    for key in sorted(k for k in result if k.startswith(SCORE_PREFIXES)):
        entry[key] = round(float(result[key]), 4)
    return entry


def format_entry(entry: Mapping[str, Any]) -> str:
    """The one human line of a round: stage, round, sites answered, loss, seconds."""
    loss = entry.get("loss")
    seconds = entry.get("seconds")
    parts = [
        f"{entry['stage']} round {entry['round']}/{entry['rounds']}",
        f"{entry['sites_answered']}/{entry['sites_asked']} site(s) answered",
        f"loss {loss:.4f}" if isinstance(loss, int | float) else "loss -",
    ]
    parts += [f"{k} {v:.3g}" for k, v in entry.items() if k.startswith(SCORE_PREFIXES)]
    parts.append(f"{seconds:.1f} s" if isinstance(seconds, int | float) else "- s")
    return ", ".join(parts)


def append_entry(folder: Path, entry: Mapping[str, Any]) -> None:
    """Append one round to ``folder/progress.jsonl`` (one whole line per write) and log it."""
    with (folder / PROGRESS_FILE).open("a", encoding="utf-8") as out:
        out.write(json.dumps(dict(entry)) + "\n")
    logger.info("%s", format_entry(entry))


class ProgressTail:
    """Reads the complete lines added to a run folder's ``progress.jsonl`` since the last call."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / PROGRESS_FILE
        self._offset = 0

    def new_entries(self) -> list[dict[str, Any]]:
        """Rounds recorded since the last call (a line still being written waits for the next call)."""
        try:
            with self.path.open("rb") as src:
                src.seek(self._offset)
                data = src.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def read_progress(folder: Path) -> list[dict[str, Any]]:
    """Every round recorded in ``folder/progress.jsonl`` (empty when the run recorded none)."""
    return ProgressTail(folder).new_entries()
