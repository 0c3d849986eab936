"""Federation benchmark: coordinator memory against the number of sites, and round overhead.

Usage::

    python bench/federation.py [--sites 4 16 64] [--model student|tiny] [--rounds 3]
                               [--skip-overhead] [--skip-memory]

**Memory.** One aggregation round at the student's model size with 4, 16 and 64 simulated sites, each
in a fresh process (peak RSS cannot be reset within one): Flower's stock path (``send_and_receive``
collects every reply, stock FedAvg) against cardiofm's (a :class:`~cardiofm.federated.streaming.StreamingGrid`
hands replies one by one to the partial-label strategy, which folds them into a running sum). The
simulated sites are a Flower ``Grid`` that builds each site's update when it is pulled, so only the
coordinator side is measured. Target: cardiofm's peak at 64 sites ≤ 1.5× its peak at 4.

**Round overhead.** A real SuperLink and two SuperNodes on loopback, the cardiofm app (a teacher stage,
one local step per round): round wall time minus the slowest site's reported local training time,
against Flower's own polling floor, measured in the same run on the same SuperLink: the round time of
a stock ServerApp/ClientApp that exchanges one tiny array and does nothing else (SuperNode poll,
ClientApp process start, the stock grid's 3 s reply poll). cardiofm runs twice: as ``site join``
deploys it (a site worker beside each SuperNode, torch loaded once) and without the worker (each
message's ClientApp process imports torch and MONAI itself). Target: the first ≤ 1.2× the stock round.

Prints one JSON object with every figure and ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

#: Flower 1.42's fixed sleeps (SuperNode idle poll, stock ``send_and_receive`` poll), in seconds.
FLOWER_SUPERNODE_POLL_S = 3.0
FLOWER_GRID_POLL_S = 3.0

# --------------------------------------------------------------------------------------------------
# memory: one round in a child process
# --------------------------------------------------------------------------------------------------


def _global_state(model: str) -> dict[str, np.ndarray]:
    from cardiofm.models.config import ModelConfig
    from cardiofm.models.registry import build_model

    cfg = ModelConfig.student() if model == "student" else ModelConfig.student(feature_size=12, depths=(1, 1, 1, 1))
    return {k: v.detach().numpy().copy() for k, v in build_model(cfg).state_dict().items()}


def _site_tasks(site: int, heads: list[str], partial: bool) -> list[str]:
    """A Fig. 2-like skew: every site trains the backbone and one or two heads."""
    if not partial:
        return heads
    return [heads[site % len(heads)], heads[(site + 1) % len(heads)]] if site % 3 else [heads[site % len(heads)]]


def _synthetic_grid(state: dict[str, np.ndarray], sites: int, partial: bool) -> Any:
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid

    from cardiofm.models.registry import group_of

    heads = sorted({group_of(k) for k in state} - {"backbone"})

    class SyntheticSites(Grid):
        """Sites that answer at once; each update is built only when it is pulled."""

        def __init__(self) -> None:
            self.sent: dict[str, Message] = {}

        def set_run(self, run: Any) -> None:
            raise NotImplementedError

        @property
        def run(self) -> Any:
            raise NotImplementedError

        def create_message(  # type: ignore[no-untyped-def]
            self, content, message_type, dst_node_id, group_id, ttl=None
        ) -> Message:
            return Message(content, dst_node_id, message_type, group_id=group_id)

        def get_node_ids(self) -> Iterable[int]:
            return list(range(1, sites + 1))

        def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
            ids = []
            for n, message in enumerate(messages):
                message.metadata.__dict__["_message_id"] = f"m{n}"
                self.sent[f"m{n}"] = message
                ids.append(f"m{n}")
            return ids

        def _reply(self, message: Message) -> Message:
            site = message.metadata.dst_node_id
            tasks = _site_tasks(site, heads, partial)
            rng = np.random.default_rng(site)
            trained = {
                k: (v + rng.normal(0, 1e-3, v.shape).astype(v.dtype)) if v.dtype.kind == "f" else v
                for k, v in state.items()
                if group_of(k) == "backbone" or group_of(k) in tasks
            }
            counts = {"num-examples": 10 + site, "n-backbone": 10 + site}
            counts.update({f"n-{h}": (10 + site if h in tasks else 0) for h in heads})
            metrics = MetricRecord({**counts, "train-loss": 1.0, **{f"train-loss-{h}": 1.0 for h in heads}})
            content = RecordDict(
                {"arrays": ArrayRecord({k: _array(v) for k, v in trained.items()}), "metrics": metrics}
            )
            return Message(content, reply_to=message)

        def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
            return [self._reply(self.sent[i]) for i in message_ids]

        def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
            # Flower's stock behaviour: every reply pulled and held in one list before aggregation.
            return list(self.pull_messages(list(self.push_messages(messages))))

    return SyntheticSites()


def _array(value: np.ndarray) -> Any:
    from flwr.app import Array

    return Array(value)


def one_round(mode: str, sites: int, model: str) -> dict[str, float]:
    """Run one aggregation round; return peak RSS and seconds (called in a child process)."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        setattr(TaskIdentity, name, value)
    state = _global_state(model)
    arrays = ArrayRecord({k: _array(v) for k, v in state.items()})
    model_mb = sum(v.nbytes for v in state.values()) / 2**20
    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if mode == "stock":
        from flwr.serverapp.strategy import FedAvg

        grid = _synthetic_grid(state, sites, partial=False)
        stock = FedAvg(fraction_evaluate=0.0, min_available_nodes=sites, min_train_nodes=sites)
        replies = grid.send_and_receive(stock.configure_train(1, arrays, ConfigRecord(), grid))
        result, _ = stock.aggregate_train(1, replies)
    else:
        from cardiofm.federated.strategy import build_strategy
        from cardiofm.federated.streaming import StreamingGrid

        grid = StreamingGrid(_synthetic_grid(state, sites, partial=True), poll_s=0.0)
        ours = build_strategy("fedavg", min_nodes=sites, proximal_mu=0.0, server_lr=1.0)
        replies = grid.send_and_receive(ours.configure_train(1, arrays, ConfigRecord(), grid), timeout=None)
        result, _ = ours.aggregate_train(1, replies)
    seconds = time.perf_counter() - start
    assert result is not None, "aggregation produced no model"
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_rss_mb": peak_mb, "before_round_mb": base_mb, "model_mb": model_mb, "seconds": seconds}


def memory_table(site_counts: list[int], model: str, stock_max_sites: int) -> dict[str, Any]:
    """Peak RSS of one round per (mode, sites), each in a fresh process.

    Flower's stock path holds every update: at the student's size and 64 sites that is over 16 GB, so it
    runs only up to ``stock_max_sites``.
    """
    rows: dict[str, dict[str, Any]] = {"stock": {}, "cardiofm": {}}
    for mode in rows:
        for n in site_counts:
            if mode == "stock" and n > stock_max_sites:
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--one", mode, str(n), "--model", model],
                capture_output=True,
                text=True,
                check=True,
            )
            rows[mode][str(n)] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {mode:8s} {n:3d} sites: {rows[mode][str(n)]}", file=sys.stderr)
    lo, hi = str(min(site_counts)), str(max(site_counts))
    stock_hi = str(max(int(n) for n in rows["stock"]))
    peak = {mode: {n: row["peak_rss_mb"] for n, row in by_n.items()} for mode, by_n in rows.items()}
    return {
        "rows": rows,
        "model_mb": rows["cardiofm"][lo]["model_mb"],
        f"cardiofm_peak_ratio_{hi}_vs_{lo}": peak["cardiofm"][hi] / peak["cardiofm"][lo],
        f"stock_peak_ratio_{stock_hi}_vs_{lo}": peak["stock"][stock_hi] / peak["stock"][lo],
        f"cardiofm_vs_stock_peak_at_{stock_hi}": peak["cardiofm"][stock_hi] / peak["stock"][stock_hi],
        "target": f"cardiofm peak at {hi} sites <= 1.5x its peak at {lo}",
        "target_met": peak["cardiofm"][hi] <= 1.5 * peak["cardiofm"][lo],
    }


# --------------------------------------------------------------------------------------------------
# round overhead: real SuperLink and SuperNodes on loopback
# --------------------------------------------------------------------------------------------------

_STOCK_APP = {
    "stockfloor/__init__.py": "",
    "stockfloor/client.py": """import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context) -> Message:
    arrays = msg.content.array_records["arrays"]
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)
""",
    "stockfloor/server.py": """import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, RecordDict
from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context) -> None:
    rounds = int(context.run_config["num-rounds"])
    while len(list(grid.get_node_ids())) < 2:
        time.sleep(0.5)
    arrays = ArrayRecord({"w": Array(np.zeros(16, np.float32))})
    seconds = []
    for r in range(1, rounds + 1):
        start = time.monotonic()
        messages = [
            grid.create_message(RecordDict({"arrays": arrays, "config": ConfigRecord()}), MessageType.TRAIN, n, str(r))
            for n in grid.get_node_ids()
        ]
        replies = list(grid.send_and_receive(messages, timeout=600))
        assert len(replies) == len(messages)
        seconds.append(time.monotonic() - start)
    with open(context.run_config["out"], "w") as fh:
        json.dump({"round_seconds": seconds}, fh)
""",
}


def _stock_app(parent: Any) -> Any:
    from cardiofm.federated.fab import FLWR_VERSION, flower_app_pyproject

    app = parent / "stock-floor"
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(
        flower_app_pyproject(
            name="stock-floor",
            version="1.0.0",
            description="no-op stock Flower app: the polling floor of the federation bench",
            dependencies=[f"flwr=={FLWR_VERSION}"],
            publisher="bench",
            serverapp="stockfloor.server:app",
            clientapp="stockfloor.client:app",
            config={"num-rounds": 3, "out": ""},
        )
    )
    for name, text in _STOCK_APP.items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    return app


def _start_supernodes(port: int, sites: list[Any], env: dict[str, str], workers: bool) -> list[Any]:
    """One SuperNode per site (and, with ``workers``, the site worker ``site join`` starts beside it)."""
    from cardiofm.federated.flwr_cli import format_config
    from cardiofm.federated.loopback import free_port
    from cardiofm.federated.site_worker import start_worker

    procs = []
    for node in sites:
        node_config: dict[str, str | int | float | bool] = {"dataset": str(node.dataset)}
        node_config["work-dir"] = str(node.work_dir)
        if workers:
            worker, extra = start_worker(node, env=env)
            procs.append(worker)
            node_config.update(extra)
        cmd = [*_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}"]
        cmd += ["--port", str(free_port()), "--node-config", format_config(node_config)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        )
    return procs


def _stop(procs: list[Any]) -> None:
    import os

    for proc in reversed(procs):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)


def _cardiofm_rounds(cli: Any, root: Any, rounds: int, tag: str) -> list[dict[str, float]]:
    """A teacher stage with one local step per round; per round: wall time, slowest site's training, overhead."""
    from cardiofm.contracts.federated_run import FederatedRunConfig
    from cardiofm.federated.fab import write_app_dir

    out_dir = root / f"coordinator-{tag}"
    run = FederatedRunConfig.model_validate(
        {
            "stage": "teacher:landmarks",
            "num_rounds": rounds,
            "min_nodes": 2,
            "local_steps": 1,
            "batch_size": 1,
            "spacing_mm": 3.0,
            "patch_size_vox": 32,
            "teacher_filters": (4, 8, 16, 32),
            "out_dir": str(out_dir),
        }
    )
    run_id = cli.start_run(write_app_dir(root / f"app-{tag}"), run.to_run_config())
    cli.wait_for_run(run_id, timeout_s=1800, poll_s=2.0)
    summary = json.loads(next(out_dir.glob(f"run-{run_id}-*/summary.json")).read_text())
    out = []
    for entry in summary["rounds"]:
        train = entry["train"]
        local = max(float(m.get("train-seconds", 0.0)) for m in train["metrics"].values())
        out.append({"round_s": train["seconds"], "local_training_s": local, "overhead_s": train["seconds"] - local})
    return out


def round_overhead(rounds: int) -> dict[str, Any]:
    """Seconds per round beyond local training: cardiofm's app (with and without the site worker) against a
    no-op stock Flower app, on the same SuperLink in the same run."""
    import tempfile
    from pathlib import Path

    from cardiofm.contracts.federated_run import SiteNodeConfig
    from cardiofm.federated.flwr_cli import FlwrCli, flower_env, write_connection_config
    from cardiofm.federated.loopback import free_port
    from cardiofm.phantoms.federation import FederationSettings, generate_federation
    from cardiofm.pipeline.prepare import prepare_site

    with tempfile.TemporaryDirectory(prefix="cardiofm-bench-") as tmp:
        root = Path(tmp)
        record = generate_federation(
            root / "phantoms",
            FederationSettings(sites=2, cases_per_site=2, seed=4, held_out_sites=0, series_per_study=1),
        )
        sites = []
        for site in record.sites:
            dataset = root / site.site_id / "dataset"
            prepare_site(root / "phantoms" / site.folder, dataset, test_fraction=0.0)
            sites.append(SiteNodeConfig(dataset=dataset, work_dir=root / site.site_id / "work"))
        home = root / "flwr-home"
        home.mkdir()
        env = {**flower_env(home), "OMP_NUM_THREADS": "1"}
        port = free_port()
        write_connection_config(home, f"127.0.0.1:{port}", None)
        superlink = subprocess.Popen(
            [*_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port)]
            + ["--disable-runtime-dependency-installation"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        ours: dict[str, list[dict[str, float]]] = {}
        try:
            time.sleep(5)
            cli = FlwrCli(home)
            nodes = _start_supernodes(port, sites, env, workers=True)
            try:
                # Flower's floor: a stock ServerApp/ClientApp that does nothing but exchange one tiny array.
                floor_out = root / "floor.json"
                run_id = cli.start_run(_stock_app(root), {"num-rounds": rounds, "out": str(floor_out)})
                cli.wait_for_run(run_id, timeout_s=900, poll_s=2.0)
                floor = json.loads(floor_out.read_text())["round_seconds"]
                ours["site_worker"] = _cardiofm_rounds(cli, root, rounds, "worker")
            finally:
                _stop(nodes)
            # the same app without the worker: every message's ClientApp process imports torch and MONAI itself
            nodes = _start_supernodes(port, sites, env, workers=False)
            try:
                ours["per_message_process"] = _cardiofm_rounds(cli, root, rounds, "plain")
            finally:
                _stop(nodes)
        finally:
            _stop([superlink])
    floor_median = float(np.median(floor))
    medians = {mode: float(np.median([r["overhead_s"] for r in rows])) for mode, rows in ours.items()}
    return {
        "rounds": rounds,
        "sites": 2,
        "flower_floor_round_s": floor,
        "cardiofm_rounds": ours,
        "flower_floor_median_s": floor_median,
        "cardiofm_overhead_median_s": medians,
        "overhead_vs_floor": {mode: m / floor_median for mode, m in medians.items()},
        "target": "cardiofm (site worker) overhead per round <= 1.2x the stock Flower round",
        "target_met": medians["site_worker"] <= 1.2 * floor_median,
    }


def _bin(name: str) -> list[str]:
    from pathlib import Path

    return [str(Path(sys.executable).parent / name)]


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--model", choices=["student", "tiny"], default="student")
    parser.add_argument("--stock-max-sites", type=int, default=16)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "SITES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_round(args.one[0], int(args.one[1]), args.model)))
        return
    report: dict[str, Any] = {}
    if not args.skip_overhead:
        report["round_overhead"] = round_overhead(args.rounds)
        print(json.dumps(report["round_overhead"]), file=sys.stderr)
    if not args.skip_memory:
        report["memory"] = memory_table(sorted(args.sites), args.model, args.stock_max_sites)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
