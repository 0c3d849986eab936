"""Stage what the DAG-installer image copies into ``docker/files/`` (Kaapana builds it from that folder alone).

``python extensions/cardiofm-workflow/stage_files.py`` (``make kaapana-files``): the DAG files, the operator
package and the light part of ``cardiofm`` the operators import (its contracts and errors; no torch, no DICOM
libraries). Standard library only.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FILES = HERE / "docker" / "files"
#: The cardiofm modules the operators and DAGs import (``cardiofm.contracts`` and what it imports).
CARDIOFM_SUBSET = ("__init__.py", "py.typed", "errors.py", "constants.py", "contracts")
AIRFLOW_IGNORE = ".airflowignore"


def stage(files: Path = FILES) -> Path:
    """Fill ``files`` (emptied first) and return it."""
    shutil.rmtree(files, ignore_errors=True)
    files.mkdir(parents=True)
    for dag in sorted((REPO / "dags").glob("*.py")):
        shutil.copy2(dag, files / dag.name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "operators" / "cardiofm_operators", files / "cardiofm_operators", ignore=ignore)
    for name in CARDIOFM_SUBSET:
        source = REPO / "cardiofm" / name
        if source.is_dir():
            shutil.copytree(source, files / "cardiofm" / name, ignore=ignore)
        else:
            (files / "cardiofm").mkdir(exist_ok=True)
            shutil.copy2(source, files / "cardiofm" / name)
    # modules, not DAG files: Airflow's DAG processor must not parse them
    shutil.copy2(REPO / "operators" / "cardiofm_operators" / AIRFLOW_IGNORE, files / "cardiofm" / AIRFLOW_IGNORE)
    return files


def install(root: Path) -> Path:
    """What the DAG-installer image holds under ``/kaapana/tmp``, rebuilt in ``root`` (for checks without Docker).

    Stages the files into ``root/context/files`` and replays the Dockerfile's ``COPY`` lines into
    ``root/kaapana/tmp``; returns that folder. Raises ``FileNotFoundError`` for a ``COPY`` source that was not
    staged and ``ValueError`` for a destination outside ``/kaapana/tmp``.
    """
    context = root / "context"
    stage(context / "files")
    dockerfile = (HERE / "docker" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if not line.startswith("COPY "):
            continue
        source, dest = line.split()[1:3]
        src = context / source
        if not src.exists():
            raise FileNotFoundError(f"COPY {source}: not staged")
        if not dest.startswith("/kaapana/tmp/"):
            raise ValueError(f"COPY {source} {dest}: outside /kaapana/tmp")
        target = root / dest.lstrip("/")
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / src.name)
    return root / "kaapana" / "tmp"


if __name__ == "__main__":
    print(f"staged {stage(Path(sys.argv[1]) if len(sys.argv) > 1 else FILES)}")
