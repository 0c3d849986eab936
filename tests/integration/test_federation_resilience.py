"""Resilience on a real loopback federation: a coordinator killed mid-run resumes; a site killed mid-round is left out.

Three phantom sites (the last one held out: no labels) and a SuperLink that keeps its state in a database, as a
coordinator that must survive a restart would. Both tests kill processes with SIGKILL (no clean shutdown):

* the SuperLink (with its ServerApp) right after round 1's checkpoint; a new SuperLink on the same database and
  port, then the same stage relaunched with ``resume=true``: it runs only the remaining rounds;
* one site's SuperNode (with its ClientApp) as round 1 starts: the round completes with the two other sites,
  within the round timeout, and the run completes.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_federation_e2e import COMMON, Federation, holders, make_federation, started, stop

from cardiofm.federated.server_app import completed_rounds
from cardiofm.training.checkpoint import load_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGE = "teacher-landmarks"
#: A killed site is reported unavailable by the SuperLink after two missed 30 s heartbeats.
ROUND_TIMEOUT_S = 150.0


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with started(make_federation(tmp_path_factory.mktemp("resilience"), sites=3, database=True)) as fed:
        yield fed


def _teacher(fed: Federation, **overrides: Any) -> dict[str, Any]:
    return {
        "stage": "teacher:landmarks",
        "patch-size-vox": 32,
        "out-dir": str(fed.out_dir),
        **COMMON,
        "round-timeout-s": ROUND_TIMEOUT_S,
        **overrides,
    }


def _wait_for(path: Path, fed: Federation, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout_s:.0f} s\n{fed.log_tails()}")
        time.sleep(0.2)


def test_a_killed_coordinator_resumes_from_the_last_completed_round(federation: Federation) -> None:
    fed = federation
    run_id = fed.start(_teacher(fed, **{"num-rounds": 3, "strategy": "fedadam"}))
    first = fed.out_dir / f"run-{run_id}-{STAGE}"
    _wait_for(first / "round-001.pt", fed)
    assert fed.superlink is not None
    stop(fed.superlink, signal.SIGKILL)  # SuperLink, SuperExec and ServerApp: no clean shutdown
    assert not (first / "summary.json").is_file()
    done = max(completed_rounds(first))
    assert 1 <= done < 3
    fed.start_superlink()  # same port, same database

    resumed_id, info = fed.run(_teacher(fed, **{"num-rounds": 3, "strategy": "fedadam", "resume": True}))
    assert info["status"] == "finished:completed", f"{info}\n{fed.log_tails()}"
    folder, summary = fed.summary(resumed_id, STAGE)
    assert summary["status"] == "completed"
    assert summary["resumed"] == {"from_run": first.name, "from_round": done, "server_optimizer": "restored"}
    rounds = [r["round"] for r in summary["rounds"]]
    assert rounds == list(range(done + 1, 4))  # only the remaining rounds: configured total reached
    assert all(r["participants"] == len(fed.sites) for r in summary["rounds"])
    assert completed_rounds(folder) == list(range(done, 4))
    assert (first / "superseded.json").is_file()
    round_1 = load_checkpoint(first / "round-001.pt").state_dict
    final = load_checkpoint(folder / "global.pt").state_dict
    assert not all(torch.equal(round_1[k], final[k]) for k in final)
    for site in fed.sites:
        assert json.loads((site.work_dir / "run-finished").read_text())["run_id"] == resumed_id
        (site.work_dir / "run-finished").unlink()


def test_a_site_killed_mid_round_is_left_out_and_the_run_completes(federation: Federation) -> None:
    fed = federation
    killed = 0  # the first site holds landmark labels: the head loses one of its holders
    landmark_holders = holders(fed, "landmarks")
    run_id = fed.start(_teacher(fed, **{"min-nodes": 2}))
    folder = fed.out_dir / f"run-{run_id}-{STAGE}"
    _wait_for(folder / "round-000.pt", fed)  # written just before round 1's training messages go out
    stop(fed.supernodes[killed], signal.SIGKILL)
    info = fed.wait(run_id)
    assert info["status"] == "finished:completed", f"{info}\n{fed.log_tails()}"
    _, summary = fed.summary(run_id, STAGE)
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    first = summary["rounds"][0]
    assert first["participants"] == 2
    assert first["train"]["sent"] == 3
    assert first["train"]["errors"] + first["train"]["timed_out"] == 1
    assert first["seconds"] < ROUND_TIMEOUT_S + 30
    for entry in summary["rounds"]:
        assert entry["participants"] == 2
        assert entry["groups"]["landmarks"]["sites"] == landmark_holders - 1
    assert summary["final"]["sites_saved_model"] == 2
    print("round seconds:", [round(r["seconds"], 1) for r in summary["rounds"]])
