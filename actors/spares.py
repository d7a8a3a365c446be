"""The edge's way to each user's session actor: a warm pool of started, unbound actors, so that a
user's first call binds one at once instead of waiting for a process to start and import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import OrderedDict
from typing import Any

from actors import directory, version
from actors.admission import Admission, SlotCount
from actors.capacity import slots_full
from actors.session_ray import start_unbound_actor
from chatdf.errors import Unavailable
from chatdf.settings import Settings

log = logging.getLogger(__name__)

HANDLE_CACHE_MAX = 10_000  # users whose actor handle an edge remembers between calls
RANK_CACHE_S = 5.0  # how long an edge trusts the deploys' ranks (edges start and stop)
ROOM_CHECK_S = 1.0  # a start waiting on full session slots asks one more idle actor to leave
ROOM_ASKS_MAX = 8  # actors asked to leave per check (the least recently called first)
BUSY = "The server is busy; try again in a moment"
LEFT_EARLY = "every session slot is taken: an idle session actor left early, of user"


# Per event loop (an edge's; tests run several edges in one process, each on its own loop):
# ACTOR_START_CONCURRENCY -> the gate.
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Admission]] = (
    weakref.WeakKeyDictionary()
)


def start_gate(settings: Settings) -> Admission:
    """This edge's gate on session actor starts: at most ACTOR_START_CONCURRENCY (default: the
    cluster's CPUs) actors between `start_unbound_actor` and the end of their warm-up, the rest
    waiting in order.

    Why: an actor's cost is its start (Python, Ray, chatdf's and the SDK's imports: ≈ 1.2 CPU-s
    measured), and Ray bounds only the first part of it (`worker_maximum_startup_concurrency`,
    until the worker registers). A burst of 50 new users started 50 processes importing at once;
    sharing the CPU, all were ready together at the end (measured: every POST of the burst
    answered at the same second, 73 s in). In order, the first users are served in seconds
    and the median halves; the last one waits as long as before.
    """
    concurrency = settings.actor_start_concurrency
    gates = _gates.setdefault(asyncio.get_running_loop(), {})
    gate = gates.get(concurrency)
    if gate is None:
        if concurrency:
            gate = Admission(lambda: concurrency)
        else:
            import ray

            gate = Admission(SlotCount("CPU", ray.cluster_resources))
        gates[concurrency] = gate
    return gate


async def start_warm(settings: Settings, edge: str = "") -> tuple[str, Any]:
    """Starts an unbound session actor and waits for its warm-up, through the start gate."""
    async with start_gate(settings).slot():
        starting = asyncio.ensure_future(asyncio.to_thread(start_unbound_actor, settings, edge))
        try:
            name, handle = await asyncio.shield(starting)
        except asyncio.CancelledError:  # the thread still starts it: end it once it has
            starting.add_done_callback(_kill_started)
            raise
        try:
            await handle.warm.remote()
        except BaseException:
            _kill(handle)
            raise
    return name, handle


class SparePool:
    """Keeps WARM_SESSION_ACTORS started, unbound session actors ready for this edge's users.

    A spare costs one Ray worker process, started and warmed (imports done, database connected)
    off the request path; taking one starts its replacement in the background. Spares are
    detached, so a bound one outlives the edge, and watch the edge's hub, so an unbound one exits
    when the edge dies (even on kill -9).
    """

    def __init__(self, settings: Settings, edge: str) -> None:
        self.settings = settings
        self.edge = edge
        self.size = settings.warm_session_actors
        self._ready: list[tuple[str, Any]] = []
        self._filling: set[asyncio.Task[None]] = set()
        self._waiters: list[asyncio.Future[None]] = []  # callers waiting for a spare coming
        self._closed = False

    def __len__(self) -> int:
        return len(self._ready)

    def start(self) -> None:
        self._refill()

    async def take(self) -> tuple[str, Any] | None:
        """A warmed spare (its name and handle), or None when none is ready or coming.

        A caller waits for a spare already being started (it began earlier, so it is ready
        sooner than a new start, e.g. right after the edge starts) while there are fewer
        such callers than spares on the way; the others start their own at once.
        """
        while not self._ready and len(self._filling) > len(self._waiters):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        spare = self._ready.pop() if self._ready else None
        self._refill()
        return spare

    def _wake_one(self) -> None:
        """A spare became ready, or a start ended (either way): one waiter looks again."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return

    def give_back(self, spare: tuple[str, Any]) -> None:
        """A spare that lost a race to bind (the user already had an actor) is still unbound."""
        if self._closed or len(self._ready) >= self.size:
            _kill(spare[1])
        else:
            self._ready.append(spare)
            self._wake_one()

    async def wait_filled(self) -> None:
        """Returns once every spare being started is ready (or failed)."""
        while self._filling:
            await asyncio.gather(*list(self._filling), return_exceptions=True)

    def _refill(self) -> None:
        if self._closed:
            return
        while len(self._ready) + len(self._filling) < self.size:
            task = asyncio.get_running_loop().create_task(self._add_one())
            self._filling.add(task)
            task.add_done_callback(self._filled)

    def _filled(self, task: asyncio.Task[None]) -> None:
        self._filling.discard(task)
        self._wake_one()

    async def _add_one(self) -> None:
        try:
            if await asyncio.to_thread(slots_full):
                return  # a spare would take a slot a user's start waits for; retried at a take
            name, handle = await start_warm(self.settings, self.edge)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("could not start a warm session actor (%s)", type(exc).__name__)
            return
        if self._closed:
            _kill(handle)
        else:
            self._ready.append((name, handle))

    async def close(self) -> None:
        self._closed = True
        for task in list(self._filling):
            task.cancel()
        await asyncio.gather(*list(self._filling), return_exceptions=True)
        while self._ready:
            _kill(self._ready.pop()[1])


class Sessions:
    """Finds or binds each user's session actor for this edge (REST routes and the socket side).

    Handles are remembered per user; a call that finds its actor gone forgets it (`forget`) and
    the next lookup binds a new one. A user whose actor belongs to an older deploy than this
    edge's (actors/version.py) is handed over: a new actor binds over the old one, which
    finishes what it runs and exits.
    """

    def __init__(self, settings: Settings, pool: SparePool | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.version = version.deploy_version(settings)
        self._number = 0  # this edge's start number (actors/version.py); 0: not registered
        self._ranks: dict[str, int] = {}  # each deploy's rank, from the live edges' hubs
        self._ranks_read = -RANK_CACHE_S
        self._handles: OrderedDict[str, tuple[str, Any]] = OrderedDict()
        self._binding: dict[str, asyncio.Future[Any]] = {}

    async def register(self) -> int:
        """Takes this edge's start number (once, at start); its hub's name carries it."""
        if not self._number:
            self._number = await asyncio.to_thread(
                version.register, self.version, self.settings.ray_namespace
            )
        return self._number

    async def find(self, user_id: str, *, fresh: bool = False) -> Any:
        """The user's live actor, or None (this never starts one). `fresh`: ask the directory,
        not this edge's memory (which may name an actor that has just exited)."""
        found = await self._find(user_id, fresh)
        return None if found is None else found[1]

    async def _find(self, user_id: str, fresh: bool = False) -> tuple[str, Any] | None:
        found = None if fresh else self._handles.get(user_id)
        if found is not None:
            self._handles.move_to_end(user_id)  # least recently called first (`_make_room`)
            return found
        try:
            found = await asyncio.to_thread(
                directory.find_bound, user_id, self.settings.ray_namespace
            )
        except ValueError:
            return None
        self._remember(user_id, found)
        return found

    async def get(self, user_id: str) -> Any:
        """The user's actor, bound now (a warm spare if one is ready) if none runs, or if the
        one that runs belongs to an older deploy."""
        found = await self._find(user_id)
        if found is not None and not await self._outdated(found[0]):
            return found[1]
        pending = self._binding.get(user_id)
        if pending is None:  # one bind per user at a time on this edge (a page's first calls)
            replacing = "" if found is None else found[0]
            pending = asyncio.ensure_future(self._bind(user_id, replacing))
            self._binding[user_id] = pending
            pending.add_done_callback(lambda _: self._binding.pop(user_id, None))
        return await asyncio.shield(pending)

    async def _outdated(self, name: str) -> bool:
        """Whether the actor `name` runs a deploy older than this edge's."""
        theirs = version.version_of(name)
        if theirs == self.version:
            return False
        mine = await self.register()
        if time.monotonic() - self._ranks_read >= RANK_CACHE_S:
            self._ranks = await asyncio.to_thread(version.live_ranks, self.settings.ray_namespace)
            self._ranks_read = time.monotonic()
        return self._ranks.get(theirs, 0) < max(self._ranks.get(self.version, 0), mine)

    async def _bind(self, user_id: str, replacing: str = "") -> Any:
        spare = await self.pool.take() if self.pool is not None else None
        warm = spare is not None  # a pool's spare exits with this edge; a cold one does not
        if spare is None:
            spare = await self._start(user_id)
        name, handle = spare
        try:
            winner: str = await handle.bind.remote(user_id, replacing)
        except Exception:
            bound = await self.find(user_id, fresh=True)
            if not warm and not _same_actor(bound, handle):
                _kill(handle)  # it never became anyone's session: do not leave it running
            raise
        if winner != name:  # another edge bound one first: use it
            if warm and self.pool is not None:
                self.pool.give_back(spare)
            else:
                _kill(handle)
            name = winner
            handle = await asyncio.to_thread(_named_actor, winner, self.settings.ray_namespace)
        self._remember(user_id, (name, handle))
        return handle

    async def _start(self, user_id: str) -> tuple[str, Any]:
        """A new actor for `user_id`, started now. While every session slot of the cluster is
        taken, this edge's least recently called users' actors idle ACTOR_PRESSURE_IDLE_S are
        asked to leave, one per ROOM_CHECK_S of waiting; past SESSION_START_TIMEOUT_S the call
        answers 503 and nothing was changed."""
        starting = asyncio.ensure_future(start_warm(self.settings))
        deadline = time.monotonic() + self.settings.session_start_timeout_s
        full = False  # whether it waited on the slots (else on the process starts before it)
        try:
            while not starting.done():
                if await asyncio.to_thread(slots_full):
                    full = True
                    await self._make_room(user_id)
                wait_s = min(ROOM_CHECK_S, deadline - time.monotonic())
                if wait_s <= 0:
                    break
                await asyncio.wait({starting}, timeout=wait_s)
        finally:
            if not starting.done():
                starting.cancel()
                await asyncio.wait({starting})  # its own clean-up (the actor ended) first
        if starting.cancelled():
            log.warning(
                "no session actor started within %.0f s", self.settings.session_start_timeout_s
            )
            why = " (every session slot was taken)" if full else ""
            timeout = self.settings.session_start_timeout_s
            raise Unavailable(BUSY, f"No session could start within {timeout:g} s{why}")
        return starting.result()

    async def _make_room(self, user_id: str) -> None:
        """Asks this edge's users' actors, least recently called first, to leave if idle
        (`SessionActor.leave_if_idle`) until one has, and ends that one."""
        candidates = [
            (other, found)
            for other, found in self._handles.items()
            if other != user_id and other not in self._binding
        ]
        for other, (_name, handle) in candidates[:ROOM_ASKS_MAX]:
            try:
                left = await handle.leave_if_idle.remote(self.settings.actor_pressure_idle_s)
            except Exception:  # gone already (it exited idle): its slot is free or freeing
                self._forget_handle(other, handle)
                continue
            if left:
                self._forget_handle(other, handle)
                _kill(handle)
                log.info("%s %s", LEFT_EARLY, other)
                return
            if self._handles.get(other, (None, None))[1] is handle:
                self._handles.move_to_end(other)  # busy: ask the others first next time

    def forget(self, user_id: str) -> None:
        self._handles.pop(user_id, None)

    def _forget_handle(self, user_id: str, handle: Any) -> None:
        """Forgets `handle` for the user unless a newer one has been remembered since."""
        if self._handles.get(user_id, (None, None))[1] is handle:
            del self._handles[user_id]

    def _remember(self, user_id: str, found: tuple[str, Any]) -> None:
        self._handles[user_id] = found
        self._handles.move_to_end(user_id)
        while len(self._handles) > HANDLE_CACHE_MAX:
            self._handles.popitem(last=False)


def _kill_started(started: asyncio.Future[tuple[str, Any]]) -> None:
    if not started.cancelled() and started.exception() is None:
        _kill(started.result()[1])


def _same_actor(a: Any, b: Any) -> bool:
    return a is not None and b is not None and a._actor_id == b._actor_id


def _named_actor(name: str, namespace: str) -> Any:
    import ray

    return ray.get_actor(name, namespace=namespace)


def _kill(handle: Any) -> None:
    import ray

    with contextlib.suppress(Exception):
        ray.kill(handle, no_restart=True)
