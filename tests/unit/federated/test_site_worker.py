"""The site worker: one long-lived process answers the ClientApp's messages; only this site's key opens it."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import numpy as np
import pytest

from cardiofm.contracts.federated_run import FederatedRunConfig, SiteNodeConfig
from cardiofm.errors import CardioFMError
from cardiofm.federated import task
from cardiofm.federated.site_worker import handle, run_at_site, start_worker, stop_worker
from tests.unit.training.dataset_helpers import calcification_site


def _spec_and_state(tmp_path: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    run = FederatedRunConfig(
        stage="teacher:calcification",
        spacing_mm=1.0,
        patch_size_vox=16,
        teacher_filters=(4, 8, 16, 32),
        local_steps=2,
        batch_size=1,
        eval_split="all",
        out_dir=str(tmp_path / "coordinator"),
    )
    spec = task.stage_spec(run)
    state = {name: t.numpy().copy() for name, t in task.initial_state(spec).items()}
    return spec.to_config(), state


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SiteNodeConfig, dict[str, str], Path]]:
    root = tmp_path_factory.mktemp("worker")
    plain = SiteNodeConfig(dataset=calcification_site(root, "site-a", 2), work_dir=root / "work")
    proc, node_extra = start_worker(plain)
    node_config = {"dataset": str(plain.dataset), "work-dir": str(plain.work_dir), **node_extra}
    try:
        yield plain, node_config, root
    finally:
        stop_worker(proc)
    assert proc.returncode == 0  # SIGTERM ends it cleanly
    assert not Path(node_extra["worker-socket"]).exists()


def test_the_worker_trains_a_round_as_the_clientapp_would_in_its_own_process(site) -> None:  # type: ignore[no-untyped-def]
    plain, node_config, root = site
    spec_config, state = _spec_and_state(root)
    arrays, metrics = run_at_site(node_config, "train", spec_config, state, 1)
    local_arrays, local_metrics = handle(plain, "train", spec_config, state, 1)
    assert {k: v.shape for k, v in arrays.items()} == {k: v.shape for k, v in local_arrays.items()}
    assert arrays
    assert set(arrays) <= set(state)
    assert set(metrics) == set(local_metrics)
    assert metrics["num-examples"] == local_metrics["num-examples"] == 2
    assert metrics["n-calcification"] == 2
    assert metrics["train-loss"] > 0
    changed = [k for k in arrays if not np.array_equal(arrays[k], state[k])]
    assert changed  # it really trained
    _, scores = run_at_site(node_config, "evaluate", spec_config, state, 1)
    assert scores["num-examples"] == 2
    assert "dice-calcification" in scores


def test_a_failure_in_the_worker_comes_back_as_an_error_and_the_worker_goes_on(site) -> None:  # type: ignore[no-untyped-def]
    _, node_config, root = site
    spec_config, state = _spec_and_state(root)
    broken = {k: v[..., :1] for k, v in state.items()}  # tensors that do not fit the model
    with pytest.raises(CardioFMError, match="RuntimeError"):
        run_at_site(node_config, "save-model", spec_config, broken, 1)
    with pytest.raises(CardioFMError, match="unknown site operation 'delete'"):
        run_at_site(node_config, "delete", spec_config, state, 1)
    _, reply = run_at_site(node_config, "save-model", spec_config, state, 1)
    assert reply == {"saved": 1}


def test_only_the_sites_key_opens_the_worker(site) -> None:  # type: ignore[no-untyped-def]
    _, node_config, root = site
    socket, key_file = Path(node_config["worker-socket"]), Path(node_config["worker-key-file"])
    assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(socket.stat().st_mode) == 0o600
    with pytest.raises(AuthenticationError):
        Client(str(socket), family="AF_UNIX", authkey=b"not the key")
    spec_config, state = _spec_and_state(root)
    _, reply = run_at_site(node_config, "save-model", spec_config, state, 1)  # still serving
    assert reply == {"saved": 1}


def test_the_clientapp_process_loads_no_torch() -> None:
    code = "import sys, cardiofm.federated.client_app; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
