"""Fixtures of the export tests (helpers in :mod:`export_cases`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from export_cases import CtCase, build_case


@pytest.fixture
def make_case(tmp_path: Path, dcm2niix_exe: str) -> Callable[[str], CtCase]:
    """Build a :class:`~export_cases.CtCase` for an orientation of :data:`~export_cases.ORIENTATIONS`."""
    return lambda orientation: build_case(tmp_path / orientation, orientation)
