"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

from cardiofm.dicom.convert import find_dcm2niix


@pytest.fixture(scope="session")
def dcm2niix_exe() -> str:
    """Path of the dcm2niix binary; it is a pinned dependency, so its absence is an error, not a skip."""
    return str(find_dcm2niix())
