"""The release written at the end of the federation: after the ``finetune`` stage's ``global.pt``.

Card facts come from the stage's round summary (per head: sites that trained it and their labelled cases, as
the sites reported them); evaluation runs later, so the card points to the evaluation report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cardiofm.models.registry import BACKBONE
from cardiofm.release.card import CardFacts, TaskData
from cardiofm.release.folder import write_release
from cardiofm.training.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

RELEASE_DIR = "release"


def facts_from_rounds(rounds: Sequence[dict[str, Any]]) -> CardFacts:
    """Card facts from a stage summary's ``rounds``: its last round with per-group counts.

    Parameters
    ----------
    rounds
        ``summary["rounds"]`` of the server app: entries with ``participants`` (sites that answered) and
        ``groups`` (``{group: {"sites": n, "examples": labelled cases}}``).
    """
    counted = [r for r in rounds if isinstance(r.get("groups"), dict)]
    last: dict[str, Any] = counted[-1] if counted else {}
    groups: dict[str, Any] = last.get("groups", {})
    participants = last.get("participants")
    data = {
        head: TaskData(sites=int(g.get("sites", 0)), cases=int(g.get("examples", 0)))
        for head, g in groups.items()
        if head != BACKBONE and isinstance(g, dict)
    }
    return CardFacts(data=data, training_sites=participants if isinstance(participants, int) else None)


def release_after_stage(checkpoint_path: Path, rounds: Sequence[dict[str, Any]]) -> Path:
    """Write the release of ``checkpoint_path`` into ``release/`` beside it; returns the folder."""
    out = checkpoint_path.parent / RELEASE_DIR
    write_release(load_checkpoint(checkpoint_path), out, facts_from_rounds(rounds))
    logger.info("release written to %s/%s", checkpoint_path.parent.name, RELEASE_DIR)
    return out
