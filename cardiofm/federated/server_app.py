"""The coordinator's Flower ServerApp: one federated stage per run, selected by ``run_config``.

``main`` parses the run config (:class:`~cardiofm.contracts.federated_run.FederatedRunConfig`), builds the
stage's initial model (or loads ``init-checkpoint``), and runs the partial-label strategy of
:func:`cardiofm.federated.strategy.build_strategy` for ``num-rounds`` rounds (``evaluate`` sends one
evaluation round instead). Every round's global model is written as a checkpoint under
``<out-dir>/run-<id>-<stage>/``; then the final model goes to every connected site (query
``action=save-model``, so sites can pseudo-label and predict), every site is told ``action=shutdown``,
and ``summary.json`` records participants, counts, losses and durations per round.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from cardiofm import __version__
from cardiofm.contracts.federated_run import FederatedRunConfig
from cardiofm.errors import ConfigError
from cardiofm.federated import task
from cardiofm.federated.aggregation import MetricMean
from cardiofm.federated.strategy import build_strategy
from cardiofm.federated.streaming import StreamingGrid
from cardiofm.models.registry import build_model
from cardiofm.training.checkpoint import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

app = ServerApp()

#: Seconds to wait for the sites' acknowledgement of the final model and of ``shutdown``.
FINAL_MESSAGE_TIMEOUT_S = 600.0


@dataclass
class Exchange:
    """One ``send_and_receive``: who answered, their counts and losses (numbers only), how long it took."""

    kind: str
    sent: int = 0
    answered: list[int] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    #: node id → the reply's metrics (counts, losses, scores; never per-case data).
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)


class RecordingGrid(Grid):
    """Delegates to ``grid``; records every ``send_and_receive`` as an :class:`Exchange` while replies stream."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.exchanges: list[Exchange] = []

    def set_run(self, run: Run) -> None:
        """Delegate to the wrapped grid."""
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        """The wrapped grid's run."""
        return self._grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        """Delegate to the wrapped grid."""
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Delegate to the wrapped grid."""
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate to the wrapped grid."""
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate to the wrapped grid."""
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send through the wrapped grid; return the replies as they arrive, recording each."""
        outgoing = list(messages)
        kind = outgoing[0].metadata.message_type if outgoing else "none"
        exchange = Exchange(kind=kind, sent=len(outgoing))
        self.exchanges.append(exchange)
        return self._record(self._grid.send_and_receive(outgoing, timeout=timeout), exchange)

    @staticmethod
    def _record(replies: Iterable[Message], exchange: Exchange) -> Iterator[Message]:
        start = time.monotonic()
        try:
            for reply in replies:
                node = int(reply.metadata.src_node_id)
                if reply.has_error():
                    exchange.errors += 1
                else:
                    exchange.answered.append(node)
                    for record in reply.content.metric_records.values():
                        exchange.metrics[node] = dict(record)
                yield reply
        finally:
            exchange.seconds = time.monotonic() - start


class RoundCheckpoints:
    """Keeps the full global model and writes ``round-NNN.pt`` after every round (Flower's ``evaluate_fn`` hook)."""

    def __init__(self, spec: task.StageSpec, state: dict[str, torch.Tensor], folder: Path) -> None:
        self.spec = spec
        self.folder = folder
        self.model = build_model(spec.model)
        self.model.load_state_dict(state)
        self.round_ended: dict[int, float] = {}

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The current global model, every tensor (also those no site trained)."""
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Merge the aggregate into the global model; checkpoint it (round 0 is the initial model)."""
        self.round_ended[server_round] = time.monotonic()
        if server_round == 0:
            return None
        own = self.model.state_dict()
        received = arrays.to_torch_state_dict()
        unknown = sorted(set(received) - set(own))
        if unknown:
            raise ConfigError(f"the aggregate names {len(unknown)} tensor(s) the model lacks, e.g. {unknown[:3]}")
        self.model.load_state_dict({**own, **received})
        path = self.folder / f"round-{server_round:03d}.pt"
        save_checkpoint(path, self.model, self.spec.model, self.spec.train, [])
        logger.info("round %d: global model checkpointed (%s)", server_round, path.name)
        return None


def _wait_for_nodes(grid: Grid, minimum: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < minimum:
        if time.monotonic() > deadline:
            raise ConfigError(f"only {len(nodes)} of at least {minimum} site(s) connected within {timeout_s:.0f} s")
        time.sleep(1.0)
    return nodes


def broadcast(grid: Grid, content: RecordDict, message_type: str, timeout_s: float) -> list[Message]:
    """Send ``content`` to every connected site and collect the replies (errors included)."""
    messages = [
        Message(content=content, message_type=message_type, dst_node_id=node) for node in list(grid.get_node_ids())
    ]
    return list(grid.send_and_receive(messages, timeout=timeout_s))


def stage_config(spec: task.StageSpec, **extra: str) -> ConfigRecord:
    """The stage's settings as a ``ConfigRecord`` (plus ``extra`` entries, e.g. a query's ``action``)."""
    values: dict[str, ConfigRecordValues] = {**spec.to_config(), **extra}
    return ConfigRecord(values)


def _query(action: str, spec: task.StageSpec, state: dict[str, torch.Tensor] | None) -> RecordDict:
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {"config": stage_config(spec, action=action)}
    if state is not None:
        records["arrays"] = ArrayRecord(state)
    return RecordDict(records)


def _ok(replies: list[Message]) -> int:
    return sum(not r.has_error() for r in replies)


def run_dir(run: FederatedRunConfig, run_id: int) -> Path:
    """``<out-dir>/run-<id>-<stage>``: this run's checkpoints and summary on the coordinator."""
    return Path(run.out_dir) / f"run-{run_id}-{run.stage_slug}"


def _rounds(exchanges: list[Exchange], ended: dict[int, float]) -> list[dict[str, Any]]:
    """One entry per round: its training and evaluation exchanges and its duration (evaluate-only runs: one)."""
    train = [e for e in exchanges if e.kind == MessageType.TRAIN]
    evaluate = [e for e in exchanges if e.kind == MessageType.EVALUATE]
    rounds: list[dict[str, Any]] = []
    for n in range(1, max(len(train), len(evaluate)) + 1):
        entry: dict[str, Any] = {"round": n}
        if n <= len(train):
            entry["train"] = asdict(train[n - 1])
        if n <= len(evaluate):
            entry["evaluate"] = asdict(evaluate[n - 1])
        if n in ended and n - 1 in ended:
            entry["seconds"] = ended[n] - ended[n - 1]
        rounds.append(entry)
    return rounds


def run_stage(grid: Grid, run: FederatedRunConfig, run_id: int) -> Path:
    """Run one federated stage end to end; returns the path of its ``summary.json``.

    Raises
    ------
    ConfigError
        For an unusable run config or initial checkpoint, or too few sites.
    """
    task.check_version(run)
    started = time.monotonic()
    out = run_dir(run, run_id)
    out.mkdir(parents=True, exist_ok=True)
    init = load_checkpoint(Path(run.init_checkpoint)) if run.init_checkpoint else None
    spec = task.stage_spec(run, init)
    checkpoints = RoundCheckpoints(spec, task.initial_state(spec, init), out)
    recorder = RecordingGrid(StreamingGrid(grid))
    summary: dict[str, Any] = {
        "run_id": run_id,
        "stage": run.stage,
        "cardiofm_version": __version__,
        "strategy": run.strategy,
        "model": spec.model.name,
        "heads": list(spec.model.heads),
        "run_config": run.to_run_config(),
    }
    if run.stage_kind == "evaluate":
        _wait_for_nodes(recorder, run.min_nodes, run.round_timeout_s)
        content = RecordDict({"arrays": ArrayRecord(checkpoints.state), "config": stage_config(spec)})
        replies = broadcast(recorder, content, MessageType.EVALUATE, run.round_timeout_s)
        mean = MetricMean()
        for reply in replies:
            if not reply.has_error():
                for record in reply.content.metric_records.values():
                    mean.add(dict(record))
        summary["evaluation"] = mean.result()
    else:
        strategy = build_strategy(
            run.strategy,
            min_nodes=run.min_nodes,
            proximal_mu=run.proximal_mu,
            server_lr=run.server_lr,
            fraction_evaluate=1.0 if run.evaluate_each_round else 0.0,
        )
        result = strategy.start(
            grid=recorder,
            initial_arrays=ArrayRecord(checkpoints.state),
            num_rounds=run.num_rounds,
            timeout=run.round_timeout_s,
            train_config=stage_config(spec),
            evaluate_config=stage_config(spec),
            evaluate_fn=checkpoints,
        )
        summary["train_metrics"] = {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()}
        summary["evaluate_metrics"] = {str(r): dict(m) for r, m in result.evaluate_metrics_clientapp.items()}
    final = checkpoints.state
    save_checkpoint(out / "global.pt", checkpoints.model, spec.model, spec.train, [])
    saved = broadcast(recorder, _query("save-model", spec, final), MessageType.QUERY, FINAL_MESSAGE_TIMEOUT_S)
    shutdown = broadcast(recorder, _query("shutdown", spec, None), MessageType.QUERY, FINAL_MESSAGE_TIMEOUT_S)
    summary["rounds"] = _rounds(recorder.exchanges, checkpoints.round_ended)
    summary["final"] = {
        "checkpoint": "global.pt",
        "sites": len(saved),
        "sites_saved_model": _ok(saved),
        "sites_shut_down": _ok(shutdown),
    }
    summary["seconds"] = time.monotonic() - started
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str))
    logger.info(
        "stage %s finished: %d round(s), final model at %d of %d site(s)",
        run.stage,
        len(summary["rounds"]),
        _ok(saved),
        len(saved),
    )
    return path


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: parse the run config and run the stage."""
    run = FederatedRunConfig.from_run_config(context.run_config)
    run_stage(grid, run, int(context.run_id))
