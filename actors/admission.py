"""Admission: at most as many tasks submitted to Ray as the cluster has slots for them.

Why: a task that waits in Ray's queue is not free. For every lease request the raylet
"prestarts" workers for the submitter's backlog, up to the node's worker soft limit, and the
embedded node raises that limit so that warm idle workers survive next to session actors
(docs/sql.md, "Warm workers"). Measured on the embedded node: 20 queries submitted at once to
4 query slots ran on the 4 warm workers and made the raylet start 10 more worker processes
(≈ 0.7 CPU-s each, and ≈ 60 MB each for as long as the node lives); 40 queries, 21 more. The
gateway therefore holds what the slots cannot run yet in its own queue (FIFO) and submits a
task only when a slot is free, so the backlog Ray sees stays near zero.

Plain asyncio, no Ray: the capacity is a callable (the hub reads the cluster's slot count).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

UNBOUNDED = 1 << 30


class Admission:
    """FIFO admission of one kind of task, at most `capacity()` at once.

    A capacity that changes (a node joined) takes effect at the next admission or release.
    """

    def __init__(self, capacity: Callable[[], int]) -> None:
        self._capacity = capacity
        self._running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Waits for a free slot (behind earlier waiters), holds it for the block."""
        if self._waiters or self._running >= max(1, self._capacity()):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed a slot as it was cancelled
                    self._release()
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
        else:
            self._running += 1
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self._running -= 1
        capacity = max(1, self._capacity())
        while self._waiters and self._running < capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._running += 1  # on the waiter's behalf
                waiter.set_result(None)


class SlotCount:
    """How many tasks taking `per_task` of one custom resource the cluster runs at once (its
    total, read at most every `refresh_s` seconds, over `per_task`); UNBOUNDED when no node
    has the resource (Ray's CPU shapes bound the tasks then)."""

    def __init__(
        self,
        resource: str,
        read: Callable[[], dict[str, Any]],
        per_task: float = 1.0,
        refresh_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resource = resource
        self._read = read
        self._per_task = per_task
        self._refresh_s = refresh_s
        self._clock = clock
        self._value = UNBOUNDED
        self._read_at: float | None = None

    def __call__(self) -> int:
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._refresh_s:
            self._read_at = now
            try:
                total = self._read().get(self.resource)
            except Exception:  # the GCS briefly unreachable: keep the last count
                return self._value
            self._value = max(1, int(total / self._per_task)) if total else UNBOUNDED
        return self._value
