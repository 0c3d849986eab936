"""bench/gpu_check.sh: valid bash, and a clear message when the Python to use is missing."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


def test_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_missing_python_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-python"
    result = subprocess.run(["bash", str(SCRIPT), str(missing)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "make setup" in result.stderr
