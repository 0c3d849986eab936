"""StreamingGrid: replies arrive one at a time, a dead site cannot hang a round, errors are counted."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from flwr.app import Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from cardiofm.federated.streaming import StreamingGrid


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps new messages with the identity of the running ServerApp task."""
    for name, value in (("_run_id", 7), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class SlowSites(Grid):
    """A grid whose sites answer after given delays (None: never; "error": an error reply)."""

    def __init__(self, clock: Clock, delays: dict[int, float | str | None]) -> None:
        self.clock = clock
        self.delays = delays
        self.sent: dict[str, Message] = {}
        self.pulls: list[list[str]] = []

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # type: ignore[no-untyped-def]
        return Message(content, dst_node_id, message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.delays)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for n, message in enumerate(messages):
            message_id = f"m{n}"
            message.metadata.__dict__["_message_id"] = message_id
            self.sent[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        ids = list(message_ids)
        self.pulls.append(ids)
        out = []
        for message_id in ids:
            message = self.sent[message_id]
            delay = self.delays[message.metadata.dst_node_id]
            if delay == "error":
                out.append(Message(Error(code=1, reason="site failed"), reply_to=message))
            elif delay is not None and self.clock() >= float(delay):
                reply = RecordDict({"metrics": MetricRecord({"num-examples": message.metadata.dst_node_id})})
                out.append(Message(reply, reply_to=message))
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise AssertionError("StreamingGrid must not fall back to collecting every reply")


def _messages(grid: Grid, nodes: Iterable[int]) -> list[Message]:
    return [grid.create_message(RecordDict(), "train", n, "1") for n in nodes]


def test_replies_stream_one_pull_per_message_id() -> None:
    clock = Clock()
    inner = SlowSites(clock, {1: 0.0, 2: 1.0, 3: 2.0})
    grid = StreamingGrid(inner, poll_s=0.5, clock=clock, sleep=clock.sleep)
    replies = grid.send_and_receive(_messages(grid, [1, 2, 3]), timeout=10)
    assert inner.pulls == []  # nothing pulled before the strategy starts consuming
    seen = []
    for reply in replies:
        seen.append(reply.content.metric_records["metrics"]["num-examples"])
        assert all(len(ids) == 1 for ids in inner.pulls)  # never more than one update in flight
    assert seen == [1, 2, 3]
    traffic = grid.traffic[-1]
    assert (traffic.sent, traffic.answered, traffic.errors, traffic.timed_out) == (3, 3, 0, 0)
    assert sorted(traffic.answered_nodes) == [1, 2, 3]
    assert traffic.seconds == pytest.approx(2.0, abs=0.5)  # polls every 0.5 s, not Flower's 3 s


def test_a_dead_site_cannot_hang_the_round() -> None:
    clock = Clock()
    grid = StreamingGrid(SlowSites(clock, {1: 0.0, 2: None, 3: 0.5}), poll_s=0.5, clock=clock, sleep=clock.sleep)
    replies = list(grid.send_and_receive(_messages(grid, [1, 2, 3]), timeout=30))
    assert len(replies) == 2
    traffic = grid.traffic[-1]
    assert traffic.timed_out == 1
    assert sorted(traffic.answered_nodes) == [1, 3]
    assert 30 <= traffic.seconds <= 31


def test_error_replies_are_passed_on_and_counted() -> None:
    clock = Clock()
    grid = StreamingGrid(SlowSites(clock, {1: "error", 2: 0.0}), clock=clock, sleep=clock.sleep)
    replies = list(grid.send_and_receive(_messages(grid, [1, 2]), timeout=5))
    assert sum(r.has_error() for r in replies) == 1
    assert grid.traffic[-1].errors == 1
    assert grid.traffic[-1].answered == 1
