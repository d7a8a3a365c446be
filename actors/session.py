"""The per-user session actor: owns the user's event stream, dataset loads, chat turns, budget."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from actors import directory
from actors.budget import TokenBudget, prune_cutoff, prune_usage
from actors.chat import ChatRunner
from actors.datasets import DatasetLoader
from actors.edges import notify_edges, watch_edge
from actors.fanout import Event, Fanout, Stamped
from actors.llm import import_provider
from actors.observe import from_edge, start_process
from chatdf.db import Database
from chatdf.settings import Settings

log = logging.getLogger(__name__)

NAME_PREFIX = "session:"
NOT_BOUND = "This session actor is not bound to a user"


class NotBound(RuntimeError):
    """A call reached a started actor before it was bound to a user (a bug, not a user error)."""


class SessionActor:
    """Plain class holding one user's live state; `actor_class()` wraps it for Ray.

    Unit tests drive it directly (no Ray), bound at construction. In the service, actors are
    started unbound ahead of demand (actors/spares.py), and one binds itself to a user when the
    user first needs it (`bind`, through actors/directory.py). It then lives while its user is
    active (a call within ACTOR_IDLE_TIMEOUT_S, a running turn or load) and exits, open sockets
    or not.
    """

    def __init__(
        self,
        user_id: str | None,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        *,
        edge: str = "",
    ) -> None:
        self.settings = settings
        self.clock = clock
        start_process(settings)  # LOG_FORMAT=json in this process (actors/observe.py)
        self.db = Database(
            settings.resolved_database_url,
            busy_timeout_s=settings.database_busy_timeout_s,
            pool_size=settings.actor_database_pool_size,
            max_overflow=settings.actor_database_max_overflow,
        )
        self.fanout = Fanout(
            settings.subscriber_queue_max, settings.event_buffer_max, settings.event_buffer_s
        )
        self.user_id: str | None = None
        self._generation = -1  # of this actor's binding in the directory; -1: none held
        self._edge = edge  # the edge that started this spare: it exits with it while unbound
        self._bind_lock = asyncio.Lock()
        self._last_active = time.monotonic()
        self._startup: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._watched: set[str] = set()  # edges whose death this actor listens for
        if user_id is not None:
            self._take_user(user_id)

    def _take_user(self, user_id: str) -> None:
        self.user_id = user_id
        self.budget = TokenBudget(user_id, self.settings, self.db, clock=self.clock)
        self.datasets = DatasetLoader(user_id, self.settings, self.db, self.publish)
        self.chat = ChatRunner(
            user_id, self.settings, self.db, self.publish, self.budget, self.datasets
        )

    # Binding -----------------------------------------------------------------------------

    async def warm(self) -> bool:
        """Makes a started, unbound actor ready to bind at once: database connected, and gone
        with the edge that started it if that edge dies before handing it to a user."""
        await asyncio.to_thread(self.db.ping)
        await asyncio.to_thread(import_provider, self.settings)  # a first turn skips it
        if self._edge and self.user_id is None:
            self._spawn(self._exit_unbound_with_edge(self._edge))
        return True

    async def _exit_unbound_with_edge(self, edge: str) -> None:
        await watch_edge(edge, self.settings.ray_namespace, lambda: self.user_id is None)
        if self.user_id is None:
            log.info("edge %s is gone; its unbound session actor exits", edge)
            _exit_current_actor()

    async def bind(self, user_id: str) -> str:
        """Becomes `user_id`'s session unless a live actor already is; returns the name of the
        user's session actor (this one's when it won)."""
        async with self._bind_lock:
            if self.user_id == user_id:
                return _current_actor_name()
            if self.user_id is not None:
                raise NotBound(f"bound to another user, not {user_id}")
            self._take_user(user_id)  # before the binding is visible: no call finds it unbound
            name = _current_actor_name()
            try:
                winner, generation = await asyncio.to_thread(
                    directory.bind, user_id, name, self.settings.ray_namespace
                )
            except BaseException:
                self._drop_user()
                raise
            if winner != name:
                self._drop_user()
                return winner
            self._generation = generation
        await self.ready()
        return name

    def _bound_user(self) -> str:
        if self.user_id is None:
            raise NotBound(NOT_BOUND)
        return self.user_id

    def _drop_user(self) -> None:
        self.user_id = None
        del self.budget, self.datasets, self.chat

    # Lifecycle ---------------------------------------------------------------------------

    async def ready(self) -> bool:
        """Finishes start-up once (budget from the database, orphaned loads closed).

        Every caller waits for the same start-up, so no call runs on a half-loaded budget.
        """
        self._bound_user()
        if self._startup is None:
            # A fresh context: the actor's own background tasks must not carry the log ids
            # (or the trace) of the call that happened to start it.
            self._startup = asyncio.get_running_loop().create_task(
                self._start(), context=contextvars.Context()
            )
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
            user_id = self._bound_user()
            calls = await asyncio.to_thread(notify_edges, user_id, self.settings.ray_namespace)
            await asyncio.gather(*calls, return_exceptions=True)
        except Exception:
            log.warning("could not wake the edges of user %s", self.user_id, exc_info=True)

    async def check_health(self) -> dict[str, Any]:
        bound = self.user_id is not None
        return {
            "user_id": self.user_id,
            "subscribers": len(self.fanout),
            "edges": sorted(self.fanout.edges()),
            "running_turns": self.chat.running_count() if bound else 0,
            "loading": self.datasets.running_count() if bound else 0,
            "polars_loaded": "polars" in sys.modules,  # must stay False (see actors/tasks.py)
            "sqlglot_loaded": "sqlglot" in sys.modules,  # also False: SQL is checked in the task
            "warm_start": bool(self._edge),  # started ahead of demand by an edge's pool
            # Only the configured provider's SDK is ever imported (actors/llm.py make_client).
            "model_sdks_loaded": sorted(m for m in ("google.genai", "openai") if m in sys.modules),
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
                await self._unbind()
                _exit_current_actor()
                return

    async def _unbind(self) -> None:
        """Gives up this actor's binding, so the user's next call starts a new actor at once."""
        if self._generation < 0 or self.user_id is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                directory.unbind, self.user_id, self._generation, self.settings.ray_namespace
            )
        self._generation = -1

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

    @from_edge
    async def add_dataset(self, conversation_id: str, url: str) -> dict[str, Any]:
        await self.ready()
        self._touch()
        return await self.datasets.add(conversation_id, url)

    @from_edge
    async def refresh_dataset(self, conversation_id: str, dataset_id: str) -> dict[str, Any]:
        await self.ready()
        self._touch()
        return await self.datasets.refresh(conversation_id, dataset_id)

    # Chat --------------------------------------------------------------------------------

    @from_edge
    async def post_message(self, conversation_id: str, content: str) -> dict[str, Any]:
        await self.ready()
        self._touch()
        return await self.chat.post(conversation_id, content)

    @from_edge
    async def stop(self, conversation_id: str) -> bool:
        self._touch()
        return await self.chat.stop(conversation_id)

    @from_edge
    async def forget_conversation(self, conversation_id: str) -> None:
        """Cancels work on a conversation that is being deleted."""
        await self.chat.stop(conversation_id)
        self.datasets.cancel_conversation(conversation_id)

    @from_edge
    async def forget_dataset(self, dataset_id: str) -> bool:
        """Cancels the load of a dataset that is being deleted (False: none was running)."""
        return self.datasets.cancel_load(dataset_id)

    @from_edge
    async def query(self, conversation_id: str, sql: str) -> dict[str, Any]:
        await self.ready()
        self._touch()
        return await self.chat.query(conversation_id, sql)

    @from_edge
    async def usage(self) -> dict[str, Any]:
        await self.ready()
        self._touch()
        return self.budget.snapshot()


def _exit_current_actor() -> None:
    import ray

    if ray.is_initialized():
        with contextlib.suppress(Exception):
            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


def _current_actor_name() -> str:
    import ray

    name: str = ray.get_runtime_context().get_actor_name() or ""
    return name


_remote_class: Any = None


def actor_class() -> Any:
    """The Ray shell around SessionActor: async, no CPU slot, many concurrent calls.

    No restarts: a restarted actor would come back unbound under a name a binding points to. A
    dead one is replaced instead (the next call binds a new actor; see api/deps.call_actor).
    """
    global _remote_class
    if _remote_class is None:
        import ray

        # Ray's stubs lack actor-only options such as max_concurrency.
        _remote_class = ray.remote(  # type: ignore[call-overload]
            num_cpus=0, max_concurrency=1000, max_restarts=0
        )(SessionActor)
    return _remote_class


def start_unbound_actor(settings: Settings, edge: str = "") -> tuple[str, Any]:
    """Starts a session actor bound to nobody yet: detached (a bound one outlives its edge),
    self-reaping once bound, gone with `edge` while unbound. Returns its name and handle."""
    name = f"{NAME_PREFIX}{uuid.uuid4().hex}"
    handle = (
        actor_class()
        .options(name=name, namespace=settings.ray_namespace, lifetime="detached")
        .remote(None, settings, edge=edge)
    )
    return name, handle


def get_session_actor(user_id: str, settings: Settings) -> Any:
    """The user's actor, started and bound on first use (blocking; the edge's path is async)."""
    import ray

    namespace = settings.ray_namespace
    try:
        return directory.find_session_actor(user_id, namespace)
    except ValueError:
        pass
    name, handle = start_unbound_actor(settings)
    winner = ray.get(handle.bind.remote(user_id))
    if winner == name:
        return handle
    ray.kill(handle, no_restart=True)
    return ray.get_actor(winner, namespace=namespace)
