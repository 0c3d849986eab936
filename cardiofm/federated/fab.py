"""The Flower app bundle (FAB): built from a clean staging folder, holding configuration only.

Design
------
* The FAB holds ``pyproject.toml`` and a README, no Python. Its components point at the *installed*
  package (``cardiofm.federated.server_app:app``, ``cardiofm.federated.client_app:app``). Flower puts the
  FAB's folder first on ``sys.path``; with no ``cardiofm/`` copy inside, nothing can shadow the
  installed package, so the code that runs at a site is the code of the site's reviewed image.
* The same version everywhere: the bundle names ``cardiofm==<version>`` in its dependencies and carries
  ``cardiofm-version`` in its run config; the ServerApp and every ClientApp refuse to run when their
  installed version differs (:func:`cardiofm.contracts.federated_run.check_version`).
* A clean staging folder: only the generated files are bundled, never DAGs, charts or weights lying
  next to a repository-level app. The folder is named ``cardiofm-fl`` (``flwr build`` rejects ``_``).
* ``[tool.flwr.app.config]`` lists every key of
  :class:`~cardiofm.contracts.federated_run.FederatedRunConfig` with its default (``flwr run --run-config``
  may only override keys listed there). ``stage`` and ``out-dir`` have no usable default: every run sets them.
* The build is deterministic, so the SHA-256 returned here is the hash sites pin.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic_core import PydanticUndefined

from cardiofm import __version__
from cardiofm.contracts.federated_run import FederatedRunConfig
from cardiofm.errors import ConfigError
from cardiofm.federated.flwr_cli import flwr_build, toml_value

#: Folder (and project) name of the app; letters, digits and ``-`` only.
APP_NAME: Final[str] = "cardiofm-fl"
PUBLISHER: Final[str] = "cardiofm"
FLWR_VERSION: Final[str] = "1.42.0"
SERVER_APP: Final[str] = "cardiofm.federated.server_app:app"
CLIENT_APP: Final[str] = "cardiofm.federated.client_app:app"

_README = """# cardiofm federated app

Configuration only: the ServerApp and ClientApp are those of the installed `cardiofm` package
(version {version}), which must be the same at the coordinator and at every site.
"""


@dataclass(frozen=True)
class FabBuild:
    """A built bundle: its file and the SHA-256 sites pin."""

    path: Path
    sha256: str


def default_run_config() -> dict[str, bool | int | float | str]:
    """Every run-config key with its default (kebab-case, lists as comma-separated text)."""
    out: dict[str, bool | int | float | str] = {}
    for name, info in FederatedRunConfig.model_fields.items():
        default = info.default
        if default is PydanticUndefined or default is None:
            default = ""
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        if name == "cardiofm_version":
            default = __version__
        if not isinstance(default, bool | int | float | str):
            raise ConfigError(f"run-config field {name} has a default Flower cannot carry: {default!r}")
        out[name.replace("_", "-")] = default
    return out


def flower_app_pyproject(
    *,
    name: str,
    version: str,
    description: str,
    dependencies: list[str],
    publisher: str,
    serverapp: str,
    clientapp: str,
    config: Mapping[str, str | int | float | bool],
) -> str:
    """``pyproject.toml`` text of a Flower app folder (what ``flwr build`` and ``flwr run`` read)."""
    deps = ", ".join(f'"{d}"' for d in dependencies)
    lines = "\n".join(f"{key} = {toml_value(value)}" for key, value in config.items())
    return f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "{version}"
description = "{description}"
dependencies = [{deps}]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "{publisher}"

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
{lines}
"""


def app_pyproject() -> str:
    """The bundle's ``pyproject.toml``."""
    return flower_app_pyproject(
        name=APP_NAME,
        version=__version__,
        description="cardiofm federated stages (configuration only; code from the installed cardiofm package)",
        dependencies=[f"flwr=={FLWR_VERSION}", f"cardiofm=={__version__}"],
        publisher=PUBLISHER,
        serverapp=SERVER_APP,
        clientapp=CLIENT_APP,
        config=default_run_config(),
    )


def write_app_dir(parent: Path) -> Path:
    """Write the app folder ``<parent>/cardiofm-fl`` (replacing an earlier one) and return it.

    The folder holds exactly ``pyproject.toml`` and ``README.md``; ``flwr run <folder>`` and
    ``flwr build --app <folder>`` both accept it.
    """
    app_dir = parent / APP_NAME
    if app_dir.exists():
        shutil.rmtree(app_dir)
    app_dir.mkdir(parents=True)
    (app_dir / "pyproject.toml").write_text(app_pyproject())
    (app_dir / "README.md").write_text(_README.format(version=__version__))
    return app_dir


def build_fab(out_dir: Path, flwr_home: Path) -> FabBuild:
    """Build the bundle from a fresh staging folder into ``out_dir``.

    Parameters
    ----------
    out_dir
        Where the ``.fab`` file goes (created if needed).
    flwr_home
        Flower's home for the ``flwr`` CLI (kept out of the user's home).

    Returns
    -------
    FabBuild
        The bundle file and its SHA-256 (the value each site pins).

    Raises
    ------
    ConfigError
        If ``flwr build`` rejects the app, naming its last output lines.
    """
    with tempfile.TemporaryDirectory(prefix="fab-stage-") as stage:
        target = flwr_build(write_app_dir(Path(stage)), flwr_home, out_dir)
    return FabBuild(path=target, sha256=hashlib.sha256(target.read_bytes()).hexdigest())
