"""Replies one at a time: a Flower ``Grid`` whose ``send_and_receive`` streams instead of collecting.

Flower's own ``send_and_receive`` pulls every ready reply at once, keeps them all in a list and sleeps
3 s between polls. With 64 sites and a 60 MB model that list alone is 4 GB. :class:`StreamingGrid`
wraps the real grid and returns a generator: each reply is pulled by its own message id, handed to the
strategy's ``aggregate_train`` (which folds it into a running sum and drops it) and only then is the next
one pulled. Peak memory is one update plus the sums, whatever the number of sites; polling is
configurable (default 0.5 s) so a round does not wait for Flower's 3 s sleep.

The generator stops when every site answered or when the round's timeout passed: a site that died
mid-round cannot hang the round; the strategy decides whether enough sites answered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

logger = logging.getLogger(__name__)


@dataclass
class RoundTraffic:
    """What happened to the messages of one ``send_and_receive`` call (no site data, only counts)."""

    sent: int = 0
    answered: int = 0
    errors: int = 0
    timed_out: int = 0
    seconds: float = 0.0
    answered_nodes: list[int] = field(default_factory=list)


class DelegatingGrid(Grid):
    """A Flower ``Grid`` that forwards every call to ``grid``; subclasses override what they change."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

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
        """Delegate to the wrapped grid."""
        return self._grid.send_and_receive(messages, timeout=timeout)


class StreamingGrid(DelegatingGrid):
    """Delegates to ``grid``; ``send_and_receive`` yields replies one by one as they arrive.

    Parameters
    ----------
    grid
        The grid Flower handed to the ServerApp.
    poll_s
        Sleep between polls while no reply is ready.
    clock, sleep
        Injectable time source and sleep (tests).
    """

    def __init__(
        self,
        grid: Grid,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(grid)
        self.poll_s = poll_s
        self._clock = clock
        self._sleep = sleep
        #: One entry per ``send_and_receive`` call, filled while its generator runs.
        self.traffic: list[RoundTraffic] = []

    # --- streaming ---------------------------------------------------------------------------------
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages`` now; return a generator over the replies (pulled one id at a time)."""
        pending = list(self._grid.push_messages(messages))
        traffic = RoundTraffic(sent=len(pending))
        self.traffic.append(traffic)
        return self._replies(pending, timeout, traffic)

    def _replies(self, pending: list[str], timeout: float | None, traffic: RoundTraffic) -> Iterator[Message]:
        start = self._clock()
        deadline = None if timeout is None else start + timeout
        try:
            while pending:
                arrived = False
                for message_id in list(pending):
                    replies = list(self._grid.pull_messages([message_id]))
                    if not replies:
                        continue
                    pending.remove(message_id)
                    arrived = True
                    reply = replies[0]
                    if reply.has_error():
                        traffic.errors += 1
                        logger.warning("a site's reply carried an error: %s", reply.error.reason)
                    else:
                        traffic.answered += 1
                        traffic.answered_nodes.append(int(reply.metadata.src_node_id))
                    del replies
                    yield reply
                if not pending:
                    break
                if deadline is not None and self._clock() >= deadline:
                    traffic.timed_out = len(pending)
                    logger.warning("%d of %d site(s) did not answer within %.0f s", len(pending), traffic.sent, timeout)
                    break
                if not arrived:
                    self._sleep(self.poll_s)
        finally:
            traffic.seconds = self._clock() - start
