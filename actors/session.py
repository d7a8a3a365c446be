"""The per-user session actor: owns the user's event stream, dataset loads, chat turns, budget."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from actors.budget import TokenBudget, prune_cutoff, prune_usage
from actors.chat import ChatRunner
from actors.datasets import DatasetLoader
from actors.edges import notify_edges, watch_edge
from actors.fanout import Event, Fanout, Stamped
from chatdf.db import Database
from chatdf.settings import Settings

log = logging.getLogger(__name__)


class SessionActor:
    """Plain class holding one user's live state; `actor_class()` wraps it for Ray.

    Unit tests drive it directly (no Ray); in the service exactly one instance per user runs as a
    named, detached Ray actor that lives while its user is active (a call within
    ACTOR_IDLE_TIMEOUT_S, a running turn or load) and then exits, open sockets or not.
    """

    def __init__(
        self,
        user_id: str,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.user_id = user_id
        self.settings = settings
        self.clock = clock
        self.db = Database(
            settings.resolved_database_url,
            busy_timeout_s=settings.database_busy_timeout_s,
            pool_size=settings.actor_database_pool_size,
            max_overflow=settings.actor_database_max_overflow,
        )
        self.fanout = Fanout(
            settings.subscriber_queue_max, settings.event_buffer_max, settings.event_buffer_s
        )
        self.budget = TokenBudget(user_id, settings, self.db, clock=clock)
        self.datasets = DatasetLoader(user_id, settings, self.db, self.publish)
        self.chat = ChatRunner(user_id, settings, self.db, self.publish, self.budget, self.datasets)
        self._last_active = time.monotonic()
        self._startup: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._watched: set[str] = set()  # edges whose death this actor listens for

    # Lifecycle ---------------------------------------------------------------------------

    async def ready(self) -> bool:
        """Finishes start-up once (budget from the database, orphaned loads closed).

        Every caller waits for the same start-up, so no call runs on a half-loaded budget.
        """
        if self._startup is None:
            self._startup = asyncio.get_running_loop().create_task(self._start())
        try:
            await asyncio.shield(self._startup)
        except Exception:  # not CancelledError (a BaseException): a cancelled caller leaves it
            self._startup = None  # a failed start (database down) is tried again next call
            raise
        return True

    async def _start(self) -> None:
        await asyncio.to_thread(self.budget.load)
        await asyncio.to_thread(self.datasets.fail_orphaned_loads)
        await asyncio.to_thread(self.chat.close_orphaned_answers)
        self._spawn(self._housekeeping())
        self._spawn(self._wake_edges())

    async def _wake_edges(self) -> None:
        """Tells every edge this actor started, so those holding the user's sockets subscribe.

        Events published before they do wait in the fan-out's buffer (see Fanout), so nothing
        after a socket's accept is lost while the edges catch up.
        """
        try:
            calls = await asyncio.to_thread(notify_edges, self.user_id, self.settings.ray_namespace)
            await asyncio.gather(*calls, return_exceptions=True)
        except Exception:
            log.warning("could not wake the edges of user %s", self.user_id, exc_info=True)

    async def check_health(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "subscribers": len(self.fanout),
            "edges": sorted(self.fanout.edges()),
            "running_turns": self.chat.running_count(),
            "loading": self.datasets.running_count(),
            "polars_loaded": "polars" in sys.modules,  # must stay False (see actors/tasks.py)
        }

    def is_idle(self) -> bool:
        """No turn, no load and no call for ACTOR_IDLE_TIMEOUT_S; open sockets do not count."""
        busy = self.chat.running_count() or self.datasets.running_count()
        idle_s = time.monotonic() - self._last_active
        return not busy and idle_s >= self.settings.actor_idle_timeout_s

    async def _housekeeping(self) -> None:
        """Prunes old usage rows and exits the actor once it has been idle long enough."""
        last_prune = 0.0
        while True:
            await asyncio.sleep(self.settings.actor_reap_interval_s)
            if time.monotonic() - last_prune >= self.settings.usage_prune_interval_s:
                last_prune = time.monotonic()
                with contextlib.suppress(Exception):
                    cutoff = prune_cutoff(self.settings, self.clock())
                    await asyncio.to_thread(prune_usage, self.db, cutoff, self.user_id)
            if self.is_idle():
                log.info("session actor for %s idle; exiting", self.user_id)
                _exit_current_actor()
                return

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _touch(self) -> None:
        self._last_active = time.monotonic()

    # Event stream ------------------------------------------------------------------------

    async def subscribe(
        self, sub_id: str, since: float = float("inf"), edge: str = ""
    ) -> AsyncIterator[list[Stamped]]:
        """Streams batches of this user's events to one edge (a Ray streaming generator).

        `since`: buffered events from this time on come first. `edge`: the edge's hub, watched
        so the subscription is dropped when that edge dies. Subscribing is no activity: an
        actor with only sockets behind it still exits once idle.
        """
        await self.ready()
        if edge and edge not in self._watched:
            self._watched.add(edge)
            self._spawn(self._drop_when_gone(edge))
        async for batch in self.fanout.stream(sub_id, since, edge):
            yield batch

    async def _drop_when_gone(self, edge: str) -> None:
        try:
            await watch_edge(edge, self.settings.ray_namespace, lambda: edge in self.fanout.edges())
            dropped = self.fanout.drop_edge(edge)
            if dropped:
                log.info("edge %s died; dropped its %d subscription(s)", edge, dropped)
        finally:
            self._watched.discard(edge)

    async def unsubscribe(self, sub_id: str) -> None:
        self.fanout.close(sub_id)

    async def publish(self, event: Event) -> None:
        """Sends an event to every edge subscribed for this user (unknown types pass as-is)."""
        if self._startup is None or not self._startup.done():
            await self.ready()  # a first call from outside starts the actor (and wakes edges)
        self._touch()  # the end of a long turn is activity too: its last events must get out
        self.fanout.publish(event)

    # Datasets ----------------------------------------------------------------------------

    async def add_dataset(self, conversation_id: str, url: str) -> dict[str, Any]:
        await self.ready()
        self._touch()
        return await self.datasets.add(conversation_id, url)

    async def refresh_dataset(self, conversation_id: str, dataset_id: str) -> dict[str, Any]:
        await self.ready()
        self._touch()
        return await self.datasets.refresh(conversation_id, dataset_id)

    # Chat --------------------------------------------------------------------------------

    async def post_message(self, conversation_id: str, content: str) -> dict[str, Any]:
        await self.ready()
        self._touch()
        return await self.chat.post(conversation_id, content)

    async def stop(self, conversation_id: str) -> bool:
        self._touch()
        return await self.chat.stop(conversation_id)

    async def forget_conversation(self, conversation_id: str) -> None:
        """Cancels work on a conversation that is being deleted."""
        await self.chat.stop(conversation_id)
        self.datasets.cancel_conversation(conversation_id)

    async def forget_dataset(self, dataset_id: str) -> bool:
        """Cancels the load of a dataset that is being deleted (False: none was running)."""
        return self.datasets.cancel_load(dataset_id)

    async def query(self, conversation_id: str, sql: str) -> dict[str, Any]:
        await self.ready()
        self._touch()
        return await self.chat.query(conversation_id, sql)

    async def usage(self) -> dict[str, Any]:
        await self.ready()
        self._touch()
        return self.budget.snapshot()


def _exit_current_actor() -> None:
    import ray

    if ray.is_initialized():
        with contextlib.suppress(Exception):
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


def actor_name(user_id: str) -> str:
    return f"session:{user_id}"


_remote_class: Any = None


def actor_class() -> Any:
    """The Ray shell around SessionActor: async, no CPU slot, many concurrent calls."""
    global _remote_class
    if _remote_class is None:
        import ray

        # Ray's stubs lack actor-only options such as max_concurrency.
        _remote_class = ray.remote(  # type: ignore[call-overload]
            num_cpus=0, max_concurrency=1000, max_restarts=3
        )(SessionActor)
    return _remote_class


def get_session_actor(user_id: str, settings: Settings) -> Any:
    """The user's actor, created on first use (get-if-exists), detached and self-reaping."""
    return (
        actor_class()
        .options(
            name=actor_name(user_id),
            namespace=settings.ray_namespace,
            lifetime="detached",
            get_if_exists=True,
        )
        .remote(user_id, settings)
    )
