"""The coordinator's Flower ServerApp: one federated stage per run, selected by ``run_config``.

``main`` parses the run config (:class:`~cardiofm.contracts.federated_run.FederatedRunConfig`), builds the
stage's initial model (or loads ``init-checkpoint``), and runs the partial-label strategy of
:func:`cardiofm.federated.strategy.build_strategy` for ``num-rounds`` rounds (``evaluate`` sends one
evaluation round instead). Every round's global model is written as a checkpoint under
``<out-dir>/run-<id>-<stage>/`` (``round-000.pt`` is the starting model); then the final model goes to every
connected site (query ``action=save-model``, so sites can pseudo-label and predict), every site is told
``action=shutdown``, and ``summary.json`` records participants, per-group counts, losses and durations per round.

Resilience:

* **Resume** (``resume=true``): the run continues the newest unfinished run of the same stage in ``out-dir``
  (a run folder without a completed ``summary.json``) from its last round checkpoint, for the remaining rounds
  only; round numbers continue (``round-003.pt`` follows ``round-002.pt``) and the summary's ``resumed`` names
  the folder and round it started from. A server optimiser's state (FedAdam moments) is saved with every round
  checkpoint and restored with it. The resumed run copies that checkpoint into its own folder and marks the
  interrupted one ``superseded.json``, so a resumed run that is killed again can be resumed in turn. Without
  ``resume`` a run always starts from round 0, even if an unfinished run exists: a run never continues
  another run's state unasked.
* **Too few sites**: a round whose training (or evaluation) is answered by fewer than ``min-nodes`` sites within
  ``round-timeout-s`` fails the run with :class:`~cardiofm.errors.FederationTimeoutError` (nothing is
  aggregated from it); so does waiting longer than ``round-timeout-s`` for ``min-nodes`` connected sites. The
  failed run's ``summary.json`` says ``status: failed`` and why; it can be resumed.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import time
from collections.abc import Callable, Iterable, Iterator
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

from cardiofm import __version__
from cardiofm.contracts.federated_run import FederatedRunConfig, check_version
from cardiofm.errors import ConfigError, FederationTimeoutError
from cardiofm.federated import task
from cardiofm.federated.aggregation import MetricMean, ServerOptimizer
from cardiofm.federated.progress import append_entry, round_entry
from cardiofm.federated.strategy import PartialLabelStrategy, build_strategy
from cardiofm.federated.streaming import DelegatingGrid, StreamingGrid
from cardiofm.models.registry import BACKBONE, build_model
from cardiofm.release.stage import release_after_stage
from cardiofm.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

app = ServerApp()

#: Seconds to wait for the sites' acknowledgement of the final model and of ``shutdown``.
FINAL_MESSAGE_TIMEOUT_S = 600.0
#: Round checkpoint names: ``round-NNN.pt``; the server optimiser's state beside it: ``round-NNN.server.pkl``.
ROUND_FILE = re.compile(r"round-(\d{3,})\.pt")
SERVER_STATE_SUFFIX = ".server.pkl"
RUN_FOLDER = re.compile(r"run-(\d+)-(.+)")
SUMMARY_FILE = "summary.json"
#: Written into an interrupted run's folder once a resumed run has taken over its last checkpoint.
SUPERSEDED_FILE = "superseded.json"
#: Train/evaluate config key: rounds completed before this run (a resumed run); sites add it to ``server-round``.
ROUND_OFFSET_KEY = "round-offset"


@dataclass
class Exchange:
    """One ``send_and_receive``: who answered, their counts and losses (numbers only), how long it took."""

    kind: str
    sent: int = 0
    answered: list[int] = field(default_factory=list)
    errors: int = 0
    #: Sites that sent neither a reply nor an error within the timeout.
    timed_out: int = 0
    seconds: float = 0.0
    #: node id → the reply's metrics (counts, losses, scores; never per-case data).
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)


class RecordingGrid(DelegatingGrid):
    """Delegates to ``grid``; records every ``send_and_receive`` as an :class:`Exchange` while replies stream.

    Parameters
    ----------
    grid
        The grid to delegate to.
    min_answers
        Message type → replies (without error) an exchange of that type needs; fewer, once the exchange ended,
        raise :class:`~cardiofm.errors.FederationTimeoutError` before the caller sees the end of the replies (so
        the strategy aggregates nothing from such a round).
    min_nodes, node_wait_s
        :meth:`get_node_ids` raises :class:`~cardiofm.errors.FederationTimeoutError` once fewer than
        ``min_nodes`` sites have been connected for longer than ``node_wait_s`` (Flower's own wait for
        sites has no timeout).
    clock
        Time source (tests).
    """

    def __init__(
        self,
        grid: Grid,
        *,
        min_answers: dict[str, int] | None = None,
        min_nodes: int = 0,
        node_wait_s: float = float("inf"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(grid)
        self.exchanges: list[Exchange] = []
        self.min_answers = dict(min_answers or {})
        self.min_nodes = min_nodes
        self.node_wait_s = node_wait_s
        self._clock = clock
        self._short_since: float | None = None

    def get_node_ids(self) -> Iterable[int]:
        """The wrapped grid's connected sites; fails once too few have been connected for too long.

        Raises
        ------
        FederationTimeoutError
            If fewer than ``min_nodes`` sites have been connected for longer than ``node_wait_s``.
        """
        nodes = list(self._grid.get_node_ids())
        if len(nodes) >= self.min_nodes:
            self._short_since = None
            return nodes
        now = self._clock()
        if self._short_since is None:
            self._short_since = now
        elif now - self._short_since > self.node_wait_s:
            raise FederationTimeoutError(
                f"only {len(nodes)} of at least {self.min_nodes} site(s) connected within {self.node_wait_s:.0f} s "
                "(min-nodes, round-timeout-s); check that the sites' SuperNodes run and reach the SuperLink"
            )
        return nodes

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send through the wrapped grid; return the replies as they arrive, recording each."""
        outgoing = list(messages)
        kind = outgoing[0].metadata.message_type if outgoing else "none"
        exchange = Exchange(kind=kind, sent=len(outgoing))
        self.exchanges.append(exchange)
        return self._record(self._grid.send_and_receive(outgoing, timeout=timeout), exchange)

    def _record(self, replies: Iterable[Message], exchange: Exchange) -> Iterator[Message]:
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
            exchange.timed_out = exchange.sent - len(exchange.answered) - exchange.errors
        needed = self.min_answers.get(exchange.kind, 0)
        if exchange.sent and len(exchange.answered) < needed:
            raise FederationTimeoutError(
                f"{exchange.kind}: only {len(exchange.answered)} of at least {needed} site(s) answered "
                f"({exchange.errors} error(s), {exchange.timed_out} without reply within the round timeout); "
                "the round is not aggregated and the run stops (min-nodes, round-timeout-s)"
            )


class RoundCheckpoints:
    """Keeps the full global model and writes ``round-NNN.pt`` after every round (Flower's ``evaluate_fn`` hook).

    Parameters
    ----------
    spec
        The stage's model and training settings.
    state
        The starting global model (round ``offset``).
    folder
        The run folder.
    offset
        Rounds completed before this run (a resumed run); Flower's round ``n`` is round ``offset + n``.
    optimizer
        The strategy's server optimiser, pickled beside every round checkpoint (None: FedAvg/FedProx).
    on_round
        Called with the round number after each aggregated round is merged and checkpointed (progress).
    """

    def __init__(
        self,
        spec: task.StageSpec,
        state: dict[str, torch.Tensor],
        folder: Path,
        offset: int = 0,
        optimizer: ServerOptimizer | None = None,
        on_round: Callable[[int], None] | None = None,
    ) -> None:
        self.spec = spec
        self.on_round = on_round
        self.folder = folder
        self.offset = offset
        self.optimizer = optimizer
        self.model = build_model(spec.model)
        self.model.load_state_dict(state)
        self.round_ended: dict[int, float] = {}

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The current global model, every tensor (also those no site trained)."""
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Merge the aggregate into the global model; checkpoint it (round 0: the starting model)."""
        number = self.offset + server_round
        self.round_ended[number] = time.monotonic()
        if server_round > 0:
            own = self.model.state_dict()
            received = arrays.to_torch_state_dict()
            unknown = sorted(set(received) - set(own))
            if unknown:
                raise ConfigError(f"the aggregate names {len(unknown)} tensor(s) the model lacks, e.g. {unknown[:3]}")
            self.model.load_state_dict({**own, **received})
        elif self.offset > 0:
            return None  # a resumed run saved its starting point already (see :func:`_run_stage`)
        self.save(number)
        if server_round > 0 and self.on_round is not None:
            self.on_round(number)
        return None

    def save(self, number: int) -> Path:
        """Write ``round-NNN.pt`` (and the server optimiser's state) atomically: a killed write leaves no file."""
        path = self.folder / f"round-{number:03d}.pt"
        if self.optimizer is not None:
            state_path = path.with_suffix(SERVER_STATE_SUFFIX)
            partial = state_path.with_name(state_path.name + ".partial")
            partial.write_bytes(pickle.dumps(self.optimizer))
            os.replace(partial, state_path)
        partial = path.with_name(path.name + ".partial")
        save_checkpoint(partial, self.model, self.spec.model, self.spec.train, [])
        os.replace(partial, path)
        logger.info("round %d: global model checkpointed (%s)", number, path.name)
        return path


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted run stopped: its folder and its last completed round."""

    folder: Path
    round: int

    @property
    def checkpoint(self) -> Path:
        """The last completed round's global model."""
        return self.folder / f"round-{self.round:03d}.pt"

    @property
    def server_state(self) -> Path:
        """The server optimiser's state after that round (absent for FedAvg/FedProx)."""
        return self.checkpoint.with_suffix(SERVER_STATE_SUFFIX)


def completed_rounds(folder: Path) -> list[int]:
    """Round numbers with a complete checkpoint in a run folder, ascending."""
    found = (ROUND_FILE.fullmatch(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def _finished(folder: Path) -> bool:
    path = folder / SUMMARY_FILE
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text()).get("status", "completed") == "completed")
    except (json.JSONDecodeError, AttributeError):
        return False


def find_resume_point(out_dir: Path, stage_slug: str, exclude: Path | None = None) -> ResumePoint | None:
    """The newest unfinished run of a stage in ``out_dir`` with at least one trained round, if any.

    Unfinished: no ``summary.json``, or one whose ``status`` is not ``completed`` (killed or failed runs), and
    not yet taken over by a resumed run (``superseded.json``).
    Newest: the one whose last round checkpoint was written last (Flower's run ids are random, not ordered).
    """
    best: tuple[float, ResumePoint] | None = None
    if not out_dir.is_dir():
        return None
    for folder in out_dir.iterdir():
        match = RUN_FOLDER.fullmatch(folder.name)
        if not match or match.group(2) != stage_slug or not folder.is_dir() or folder == exclude:
            continue
        if _finished(folder) or (folder / SUPERSEDED_FILE).is_file():
            continue
        rounds = [r for r in completed_rounds(folder) if r > 0]
        if not rounds:
            continue
        point = ResumePoint(folder, rounds[-1])
        when = point.checkpoint.stat().st_mtime
        if best is None or when > best[0]:
            best = (when, point)
    return None if best is None else best[1]


def _wait_for_nodes(grid: Grid, minimum: int, timeout_s: float) -> list[int]:
    """Connected sites once at least ``minimum`` are connected.

    Raises
    ------
    FederationTimeoutError
        If fewer than ``minimum`` sites are connected after ``timeout_s``, naming how many are.
    """
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < minimum:
        if time.monotonic() > deadline:
            raise FederationTimeoutError(
                f"only {len(nodes)} of at least {minimum} site(s) connected within {timeout_s:.0f} s "
                "(min-nodes, round-timeout-s); check that the sites' SuperNodes run and reach the SuperLink"
            )
        time.sleep(1.0)
    return nodes


def broadcast(grid: Grid, content: RecordDict, message_type: str, timeout_s: float) -> list[Message]:
    """Send ``content`` to every connected site and collect the replies (errors included)."""
    messages = [
        Message(content=content, message_type=message_type, dst_node_id=node) for node in list(grid.get_node_ids())
    ]
    return list(grid.send_and_receive(messages, timeout=timeout_s))


def stage_config(spec: task.StageSpec, **extra: ConfigRecordValues) -> ConfigRecord:
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


def _groups(exchange: Exchange, spec: task.StageSpec) -> dict[str, dict[str, int]]:
    """Per aggregation group: how many answering sites trained it and on how many examples (from their counts)."""
    out: dict[str, dict[str, int]] = {}
    keys = {head: f"n-{head}" for head in spec.model.heads}
    if spec.trains_backbone:
        keys = {BACKBONE: "num-examples", **keys}
    for group, key in keys.items():
        counts = [int(m.get(key, 0)) for m in exchange.metrics.values() if isinstance(m.get(key, 0), int)]
        out[group] = {"sites": sum(c > 0 for c in counts), "examples": sum(counts)}
    return out


def _rounds(
    exchanges: list[Exchange], ended: dict[int, float], spec: task.StageSpec, offset: int = 0
) -> list[dict[str, Any]]:
    """One entry per round: participants, per-group counts, its exchanges and its duration (evaluate-only: one)."""
    train = [e for e in exchanges if e.kind == MessageType.TRAIN]
    evaluate = [e for e in exchanges if e.kind == MessageType.EVALUATE]
    rounds: list[dict[str, Any]] = []
    for n in range(1, max(len(train), len(evaluate)) + 1):
        number = offset + n
        entry: dict[str, Any] = {"round": number}
        if n <= len(train):
            entry["participants"] = len(train[n - 1].answered)
            entry["groups"] = _groups(train[n - 1], spec)
            entry["train"] = asdict(train[n - 1])
        if n <= len(evaluate):
            entry["evaluate"] = asdict(evaluate[n - 1])
        if number in ended and number - 1 in ended:
            entry["seconds"] = ended[number] - ended[number - 1]
        rounds.append(entry)
    return rounds


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, default=str))
    os.replace(partial, path)


def _restore_optimizer(strategy: PartialLabelStrategy, point: ResumePoint) -> str:
    """Put the interrupted run's server optimiser state into ``strategy``; says what happened (for the summary).

    The state file was written by this coordinator into its own out-dir (trusted storage), hence pickle.
    """
    if strategy.server_optimizer is None:
        return "none"
    if not point.server_state.is_file():
        logger.warning("no server optimiser state beside %s; its moments restart", point.checkpoint.name)
        return "restarted"
    restored = pickle.loads(point.server_state.read_bytes())  # the coordinator's own file
    if not isinstance(restored, type(strategy.server_optimizer)):
        raise ConfigError(
            f"the interrupted run used server optimiser {type(restored).__name__}, this run "
            f"{type(strategy.server_optimizer).__name__}; resume with the same strategy"
        )
    strategy.server_optimizer = restored
    return "restored"


def _start_point(
    run: FederatedRunConfig, spec: task.StageSpec, out: Path, init: Checkpoint | None
) -> tuple[dict[str, torch.Tensor], ResumePoint | None]:
    """The starting global model: the interrupted run's last round (``resume``), else ``init`` or a fresh one.

    Raises
    ------
    ConfigError
        If ``resume`` is set but nothing can be resumed, or the interrupted run's model differs.
    """
    if not run.resume:
        return task.initial_state(spec, init), None
    if run.stage_kind == "evaluate":
        raise ConfigError("resume applies to training stages; an evaluate run has no rounds to resume")
    point = find_resume_point(Path(run.out_dir), run.stage_slug, exclude=out)
    if point is None:
        raise ConfigError(
            f"resume=true, but out-dir holds no unfinished {run.stage!r} run with a round checkpoint; "
            "start the stage without resume"
        )
    if point.round > run.num_rounds:
        raise ConfigError(
            f"the interrupted run already completed {point.round} round(s), more than num-rounds={run.num_rounds}"
        )
    resumed = load_checkpoint(point.checkpoint)
    if resumed.model_config != spec.model:
        raise ConfigError(
            f"the model of {point.folder.name}/{point.checkpoint.name} differs from this run's; "
            "resume with the interrupted run's run config"
        )
    logger.info("resuming %s after round %d of %d", point.folder.name, point.round, run.num_rounds)
    return {k: v.detach().cpu() for k, v in resumed.state_dict.items()}, point


def run_stage(grid: Grid, run: FederatedRunConfig, run_id: int) -> Path:
    """Run one federated stage end to end; returns the path of its ``summary.json``.

    The summary is written also when the stage fails (``status: failed`` and the error), then the error is
    re-raised; a run killed outright leaves no summary. Either kind of run can be continued with ``resume``.

    Raises
    ------
    ConfigError
        For an unusable run config, initial checkpoint or resume point.
    FederationTimeoutError
        If fewer than ``min-nodes`` sites connect, or answer a round, within ``round-timeout-s``.
    """
    check_version(run)
    started = time.monotonic()
    out = run_dir(run, run_id)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "stage": run.stage,
        "status": "running",
        "cardiofm_version": __version__,
        "strategy": run.strategy,
        "run_config": run.to_run_config(),
    }
    try:
        _run_stage(grid, run, out, summary)
        summary["status"] = "completed"
    except Exception as exc:
        summary["status"] = "failed"
        summary["error"] = f"{type(exc).__name__}: {exc}"
        logger.error("stage %s failed: %s", run.stage, summary["error"])
        raise
    finally:
        summary["seconds"] = time.monotonic() - started
        _write_json(out / SUMMARY_FILE, summary)
    return out / SUMMARY_FILE


def _run_stage(grid: Grid, run: FederatedRunConfig, out: Path, summary: dict[str, Any]) -> None:
    """The stage's rounds, final model delivery and shutdown; fills ``summary`` as it goes."""
    init = load_checkpoint(Path(run.init_checkpoint)) if run.init_checkpoint else None
    spec = task.stage_spec(run, init)
    summary.update(model=spec.model.name, heads=list(spec.model.heads))
    state, point = _start_point(run, spec, out, init)
    offset = point.round if point else 0
    required = {str(MessageType.TRAIN): run.min_nodes, str(MessageType.EVALUATE): run.min_nodes}
    recorder = RecordingGrid(
        StreamingGrid(grid), min_answers=required, min_nodes=run.min_nodes, node_wait_s=run.round_timeout_s
    )
    if run.stage_kind == "evaluate":
        checkpoints = RoundCheckpoints(spec, state, out)
        _wait_for_nodes(recorder, run.min_nodes, run.round_timeout_s)
        content = RecordDict({"arrays": ArrayRecord(checkpoints.state), "config": stage_config(spec)})
        replies = broadcast(recorder, content, MessageType.EVALUATE, run.round_timeout_s)
        mean = MetricMean()
        for reply in replies:
            if not reply.has_error():
                for record in reply.content.metric_records.values():
                    mean.add(dict(record))
        summary["evaluation"] = mean.result()
        last = recorder.exchanges[-1]
        append_entry(out, round_entry(run.stage, 1, 1, last.sent, last.metrics, last.seconds))
    else:
        strategy = build_strategy(
            run.strategy,
            min_nodes=run.min_nodes,
            proximal_mu=run.proximal_mu,
            server_lr=run.server_lr,
            fraction_evaluate=1.0 if run.evaluate_each_round else 0.0,
        )
        if point is not None:
            summary["resumed"] = {
                "from_run": point.folder.name,
                "from_round": point.round,
                "server_optimizer": _restore_optimizer(strategy, point),
            }
        checkpoints = RoundCheckpoints(
            spec, state, out, offset, strategy.server_optimizer, _progress_writer(recorder, run, out)
        )
        if point is not None:  # this run's folder takes over: it can itself be resumed from its first round
            checkpoints.save(offset)
            _write_json(point.folder / SUPERSEDED_FILE, {"resumed_by": out.name, "after_round": offset})
        remaining = run.num_rounds - offset
        config = stage_config(spec, **{ROUND_OFFSET_KEY: offset})
        if remaining > 0:
            _wait_for_nodes(recorder, run.min_nodes, run.round_timeout_s)
            result = strategy.start(
                grid=recorder,
                initial_arrays=ArrayRecord(checkpoints.state),
                num_rounds=remaining,
                timeout=run.round_timeout_s,
                train_config=config,
                evaluate_config=config,
                evaluate_fn=checkpoints,
            )
            summary["train_metrics"] = {str(offset + r): dict(m) for r, m in result.train_metrics_clientapp.items()}
            summary["evaluate_metrics"] = {
                str(offset + r): dict(m) for r, m in result.evaluate_metrics_clientapp.items()
            }
        summary["rounds"] = _rounds(recorder.exchanges, checkpoints.round_ended, spec, offset)
        _log_rounds(summary["rounds"])
    final = checkpoints.state
    save_checkpoint(out / "global.pt", checkpoints.model, spec.model, spec.train, [])
    if run.stage_kind == "finetune":  # the federation's final model: its release folder beside global.pt
        summary["release"] = release_after_stage(out / "global.pt", summary.get("rounds", [])).name
    saved = broadcast(recorder, _query("save-model", spec, final), MessageType.QUERY, FINAL_MESSAGE_TIMEOUT_S)
    shutdown = broadcast(recorder, _query("shutdown", spec, None), MessageType.QUERY, FINAL_MESSAGE_TIMEOUT_S)
    if run.stage_kind == "evaluate":
        summary["rounds"] = _rounds(recorder.exchanges, checkpoints.round_ended, spec)
    summary["final"] = {
        "checkpoint": "global.pt",
        "sites": len(saved),
        "sites_saved_model": _ok(saved),
        "sites_shut_down": _ok(shutdown),
    }
    logger.info(
        "stage %s finished: %d round(s), final model at %d of %d site(s)",
        run.stage,
        len(summary["rounds"]),
        _ok(saved),
        len(saved),
    )


def _progress_writer(recorder: RecordingGrid, run: FederatedRunConfig, out: Path) -> Callable[[int], None]:
    """The per-round hook: the round's last train exchange as one ``progress.jsonl`` line (see :mod:`.progress`)."""
    previous = time.monotonic()

    def write(number: int) -> None:
        nonlocal previous
        now = time.monotonic()
        trains = [e for e in recorder.exchanges if e.kind == MessageType.TRAIN]
        last = trains[-1] if trains else Exchange(kind=str(MessageType.TRAIN))
        append_entry(out, round_entry(run.stage, number, run.num_rounds, last.sent, last.metrics, now - previous))
        previous = now

    return write


def _log_rounds(rounds: list[dict[str, Any]]) -> None:
    """One log line per round: participants, per-group site counts, duration (numbers only)."""
    for entry in rounds:
        groups = ", ".join(f"{g}: {v['sites']} site(s)/{v['examples']} ex." for g, v in entry.get("groups", {}).items())
        logger.info(
            "round %d: %d participant(s); %s; %.1f s",
            entry["round"],
            entry.get("participants", 0),
            groups or "no groups",
            entry.get("seconds", float("nan")),
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: parse the run config and run the stage."""
    run = FederatedRunConfig.from_run_config(context.run_config)
    run_stage(grid, run, int(context.run_id))
