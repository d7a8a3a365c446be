"""Event fan-out inside a session actor: a short buffer of recent events, one bounded queue per
subscribed edge, batches out."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger(__name__)

Event = dict[str, Any]
Stamped = tuple[float, Event]  # (publish time, event): the edge filters by each socket's accept
_CLOSE = object()
MAX_BATCH = 500
TICK_S = 1e-6  # stamps strictly increase, so "after the last one I got" is exact
# The first item of a subscription: what the actor is running as the edge subscribes, so the
# edge can end it for the sockets if the actor dies, even a socket opened mid-turn. Edge-only:
# never sent to a socket.
IN_FLIGHT = "_in_flight"


class Fanout:
    """Copies every published event to each subscriber's queue, in order, and keeps the recent ones.

    A subscriber is an edge process streaming from the actor. It names a `since` time (the accept
    time of its oldest socket, or just past the last event it got): events of the buffer stamped at
    or after it are queued for it first, so nothing published between a socket's accept and its
    edge's subscription is lost, and nothing older is ever sent. A slow subscriber whose queue fills
    is dropped (its stream ends, the edge resubscribes) rather than letting memory grow.
    """

    def __init__(
        self,
        queue_max: int,
        buffer_max: int = 1000,
        buffer_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue_max = queue_max
        self._buffer: deque[Stamped] = deque(maxlen=buffer_max)
        self._buffer_s = buffer_s
        self._clock = clock
        self._last_stamp = 0.0
        self._queues: dict[str, asyncio.Queue[object]] = {}
        self._edges: dict[str, str] = {}  # sub_id -> the edge (hub name) it came from
        self._streaming = 0  # streams running, closed ones still sending their last events
        self._emptied = asyncio.Event()  # set when the last stream has ended

    def __len__(self) -> int:
        return len(self._queues)

    def edges(self) -> set[str]:
        """The edges that hold at least one subscription."""
        return set(self._edges.values())

    def publish(self, event: Event) -> None:
        stamp = max(self._clock(), self._last_stamp + TICK_S)
        self._last_stamp = stamp
        item = (stamp, event)
        self._buffer.append(item)
        self._expire(stamp)
        for sub_id, queue in list(self._queues.items()):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                log.warning("subscriber %s fell %d events behind; dropped", sub_id, queue.qsize())
                self._drop(sub_id)

    def recent(self, since: float) -> list[Stamped]:
        """Buffered events stamped at or after `since`, oldest first."""
        self._expire(self._clock())
        return [item for item in self._buffer if item[0] >= since]

    def close(self, sub_id: str) -> None:
        """Ends one subscriber's stream after the events already queued for it."""
        queue = self._queues.pop(sub_id, None)
        self._edges.pop(sub_id, None)
        if queue is not None:
            queue.put_nowait(_CLOSE) if not queue.full() else self._force_close(queue)

    def close_all(self, last: Event | None = None) -> None:
        """Ends every stream after the events already queued for it and `last` (unstamped, not
        buffered: an edge-only item such as IN_FLIGHT). The actor is retiring."""
        for sub_id, queue in list(self._queues.items()):
            if last is not None and queue.qsize() < self._queue_max - 1:
                queue.put_nowait((0.0, last))
            self.close(sub_id)

    async def wait_empty(self) -> None:
        """Returns once no stream runs (every edge has had its last events)."""
        while self._streaming:
            self._emptied.clear()
            await self._emptied.wait()

    def drop_edge(self, edge: str) -> int:
        """Drops every subscription of one edge (it died); returns how many."""
        gone = [sub_id for sub_id, owner in self._edges.items() if owner == edge]
        for sub_id in gone:
            self._drop(sub_id)
        return len(gone)

    def _expire(self, now: float) -> None:
        while self._buffer and self._buffer[0][0] < now - self._buffer_s:
            self._buffer.popleft()

    def _drop(self, sub_id: str) -> None:
        queue = self._queues.pop(sub_id, None)
        self._edges.pop(sub_id, None)
        if queue is not None:
            self._force_close(queue)

    @staticmethod
    def _force_close(queue: asyncio.Queue[object]) -> None:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(_CLOSE)

    async def stream(
        self, sub_id: str, since: float = float("inf"), edge: str = ""
    ) -> AsyncIterator[list[Stamped]]:
        """Yields an empty batch once registered (so the caller knows), then event batches.

        The first batches carry the buffered events from `since` on. When a backlog forms, up to
        MAX_BATCH queued events go out in one batch: Ray moves about 2,000 single items a second,
        so batching keeps up with fast token streams.
        """
        queue: asyncio.Queue[object] = asyncio.Queue(self._queue_max)
        for item in self.recent(since)[-self._queue_max :]:
            queue.put_nowait(item)
        self._queues[sub_id] = queue
        self._edges[sub_id] = edge
        self._streaming += 1
        try:
            yield []
            while True:
                first = await queue.get()
                if first is _CLOSE:
                    return
                batch: list[Stamped] = [first]  # type: ignore[list-item]
                while not queue.empty() and len(batch) < MAX_BATCH:
                    nxt = queue.get_nowait()
                    if nxt is _CLOSE:
                        yield batch
                        return
                    batch.append(nxt)  # type: ignore[arg-type]
                yield batch
        finally:
            self._streaming -= 1
            if not self._streaming:
                self._emptied.set()
            if self._queues.get(sub_id) is queue:
                del self._queues[sub_id]
                self._edges.pop(sub_id, None)
