"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest
from trained_teacher import Trained, train_overfit_teacher


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A landmark teacher overfit to one phantom (about a minute of training; shared by every test that needs it)."""
    return train_overfit_teacher(tmp_path_factory.mktemp("learning"))
