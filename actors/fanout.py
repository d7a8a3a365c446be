"""Event fan-out inside a session actor: one bounded queue per subscribed edge, batches out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger(__name__)

Event = dict[str, Any]
_CLOSE = object()
MAX_BATCH = 500


class Fanout:
    """Copies every published event to each subscriber's queue, in order.

    A subscriber is an edge process streaming from the actor; a slow one whose queue fills is
    dropped (its stream ends, the edge resubscribes) rather than letting memory grow unbounded.
    """

    def __init__(self, queue_max: int) -> None:
        self._queue_max = queue_max
        self._queues: dict[str, asyncio.Queue[object]] = {}

    def __len__(self) -> int:
        return len(self._queues)

    def publish(self, event: Event) -> None:
        for sub_id, queue in list(self._queues.items()):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("subscriber %s fell %d events behind; dropped", sub_id, queue.qsize())
                self._drop(sub_id)

    def close(self, sub_id: str) -> None:
        """Ends one subscriber's stream after the events already queued for it."""
        queue = self._queues.get(sub_id)
        if queue is not None:
            self._queues.pop(sub_id, None)
            queue.put_nowait(_CLOSE) if not queue.full() else self._force_close(queue)

    def _drop(self, sub_id: str) -> None:
        queue = self._queues.pop(sub_id, None)
        if queue is not None:
            self._force_close(queue)

    @staticmethod
    def _force_close(queue: asyncio.Queue[object]) -> None:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(_CLOSE)

    async def stream(self, sub_id: str) -> AsyncIterator[list[Event]]:
        """Yields an empty batch once registered (so the caller knows), then event batches.

        When a backlog forms, up to MAX_BATCH queued events go out in one batch: Ray moves
        about 2,000 single items a second, so batching keeps up with fast token streams.
        """
        queue: asyncio.Queue[object] = asyncio.Queue(self._queue_max)
        self._queues[sub_id] = queue
        try:
            yield []
            while True:
                item = await queue.get()
                if item is _CLOSE:
                    return
                batch: list[Event] = [item]  # type: ignore[list-item]
                while not queue.empty() and len(batch) < MAX_BATCH:
                    nxt = queue.get_nowait()
                    if nxt is _CLOSE:
                        yield batch
                        return
                    batch.append(nxt)  # type: ignore[arg-type]
                yield batch
        finally:
            if self._queues.get(sub_id) is queue:
                del self._queues[sub_id]
