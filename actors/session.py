"""The per-user session actor: owns the user's event stream, dataset loads, chat turns, budget."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from actors import directory, event_pipe, gateway
from actors.budget import TokenBudget, prune_cutoff, prune_usage
from actors.chat import ChatRunner
from actors.datasets import DatasetLoader
from actors.edges import notify_edges, watch_edge
from actors.fanout import IN_FLIGHT, Event, Fanout, Stamped
from actors.handover import Predecessors
from actors.keep_out import KEPT_OUT
from actors.llm import import_provider
from actors.observe import from_edge, start_process
from chatdf.db import Database
from chatdf.settings import Settings

log = logging.getLogger(__name__)

NOT_BOUND = "This session actor is not bound to a user"
ADMISSION_POLL_S = 0.05  # a retiring actor waiting for a call still being admitted
FLUSH_TIMEOUT_S = 5.0  # a retiring actor's last events reaching the edges before it exits


class NotBound(RuntimeError):
    """A call reached a started actor before it was bound to a user (a bug, not a user error)."""


class Retired(RuntimeError):
    """New work reached an actor that has given its user up (handed over to a newer deploy, or
    left early to free a session slot): the edge asks the directory again and calls the user's
    current actor, starting one if none runs (api/deps.call_actor)."""


class SessionActor:
    """Plain class holding one user's live state; `actor_class()` (actors/session_ray.py) wraps
    it for Ray.

    Unit tests drive it directly (no Ray), bound at construction. In the service, actors are
    started unbound ahead of demand (actors/spares.py), and one binds itself to a user when the
    user first needs it (`bind`, through actors/directory.py). It then lives while its user is
    active (a call within ACTOR_IDLE_TIMEOUT_S, a running turn or load) and exits, open sockets
    or not; sooner (`leave_if_idle`) when an edge needs its session slot for another user.

    Deploys: an actor of a newer deploy (actors/version.py) binds over a live one of an older
    deploy and tells it to `retire`. The old one takes no new work, finishes its running turns
    and loads (their events still reach every edge), then exits; until it has, the new one
    counts the old one's turns and loads against the user's caps, answers 409 for a conversation
    whose answer the old one is still writing, forwards stops to it, and leaves its rows alone
    (no start-up sweep of "orphaned" answers and loads while their owner still runs).
    """

    def __init__(
        self,
        user_id: str | None,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        *,
        edge: str = "",
        version: str = "",
    ) -> None:
        self.settings = settings
        self.version = version
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
        self._pumps: set[asyncio.Task[None]] = set()  # event pipes writing (actors/event_pipe.py)
        self._watched: set[str] = set()  # edges whose death this actor listens for
        self._retiring: asyncio.Task[None] | None = None  # handing over to a newer deploy
        self._handover: asyncio.Future[None] | None = None  # taking over: start-up waits
        self._admitting = 0  # new-work calls under way (a retiring actor waits for them)
        self._closing = False  # retired and done: streams end, new ones are refused
        self._leaving = False  # gave its binding up to free a session slot (leave_if_idle)
        self._model_prepared: asyncio.Task[None] | None = None
        if user_id is not None:
            self._take_user(user_id)

    def _take_user(self, user_id: str) -> None:
        self.user_id = user_id
        self.budget = TokenBudget(user_id, self.settings, self.db, clock=self.clock)
        self.datasets = DatasetLoader(user_id, self.settings, self.db, self.publish)
        self.chat = ChatRunner(
            user_id, self.settings, self.db, self.publish, self.budget, self.datasets
        )
        self.predecessors = Predecessors(self.chat, self.datasets)

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

    async def bind(self, user_id: str, replacing: str = "") -> str:
        """Becomes `user_id`'s session unless a live actor already is; returns the name of the
        user's session actor (this one's when it won).

        `replacing`: the user's live actor of an older deploy, which this one takes over from.
        """
        async with self._bind_lock:
            if self.user_id == user_id:
                return _current_actor_name()
            if self.user_id is not None:
                raise NotBound(f"bound to another user, not {user_id}")
            self._take_user(user_id)  # before the binding is visible: no call finds it unbound
            self._handover = asyncio.get_running_loop().create_future()
            name = _current_actor_name()
            try:
                winner, generation = await asyncio.to_thread(
                    directory.bind, user_id, name, self.settings.ray_namespace, replacing
                )
            except BaseException:
                self._end_handover()
                self._drop_user()
                raise
            if winner != name:
                self._end_handover()
                self._drop_user()
                return winner
            self._generation = generation
            try:
                await self._take_over(user_id)
            finally:
                self._end_handover()
        await self.ready()
        return name

    # Deploys -----------------------------------------------------------------------------

    async def _take_over(self, user_id: str) -> None:
        """Tells the user's other live actors (an older deploy's, finishing their work) to
        retire, before start-up, which must not sweep the rows they still write."""
        import ray

        own = ray.get_runtime_context().get_actor_id()
        try:
            found = await asyncio.to_thread(
                directory.find_streaming, user_id, self.settings.ray_namespace
            )
            others = [handle for handle in found if handle._actor_id.hex() != own]
            if others:
                await self.predecessors.take_over(others)
        except Exception:
            log.warning("could not take over from the previous session actor", exc_info=True)
            self.predecessors.may_sweep = False
        if self.predecessors:
            self._spawn(self._after_predecessors())

    def _end_handover(self) -> None:
        if self._handover is not None and not self._handover.done():
            self._handover.set_result(None)

    async def _after_predecessors(self) -> None:
        """Once the retired actors have finished (or died): their turns and loads no longer
        count here, and rows one left open (it died mid-turn) are swept as at any start."""
        await self.predecessors.wait_drained()
        await self.ready()
        if self.predecessors.may_sweep:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._sweep)
        self.predecessors.clear()

    async def retire(self) -> dict[str, Any]:
        """Hands the user over to a newer deploy's actor: no new work from now on; running turns
        and loads finish, then the actor exits. Returns what still runs here."""
        self._bound_user()
        if self._retiring is None:
            log.info("session actor for %s hands over to a newer deploy", self.user_id)
            self._retiring = asyncio.get_running_loop().create_task(
                self._drain_and_exit(), context=contextvars.Context()
            )
        return await self.running()

    async def running(self) -> dict[str, Any]:
        """The conversations whose answer this actor is writing, and how many loads it runs."""
        return {
            "conversations": self.chat.running_conversations(),
            "loads": self.datasets.running_count(),
        }

    async def drained(self) -> bool:
        """Returns once a retiring actor has finished its work (it exits right after)."""
        if self._retiring is None:
            raise NotBound("this actor is not retiring")
        await asyncio.shield(self._retiring)
        return True

    async def _drain_and_exit(self) -> None:
        while True:
            work = self.chat.running_tasks() + self.datasets.running_tasks()
            if work:
                await asyncio.wait(work)
            elif self._admitting or self.chat.running_count() or self.datasets.running_count():
                await asyncio.sleep(ADMISSION_POLL_S)  # a call admitted just before: its task
            else:
                break
        await self._unbind()  # first: edges whose streams end look up the current actor only
        # The streams end after their queued events, so the edges get every last event; the
        # last item says nothing runs here any more, so the exit reads as no interruption.
        self._closing = True
        self.fanout.close_all({"type": IN_FLIGHT, "turns": {}, "loads": {}})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flushed(), FLUSH_TIMEOUT_S)
        _exit_current_actor()  # a `drained` caller sees the reply or the exit: the same to it

    async def _flushed(self) -> None:
        """Every stream has ended, and every event pipe has written its last frame."""
        await self.fanout.wait_empty()
        if self._pumps:
            await asyncio.wait(set(self._pumps))

    @contextlib.asynccontextmanager
    async def _new_work(self) -> AsyncIterator[None]:
        """A call that starts work, once the actor is ready; once this actor retires it goes
        to the user's current one."""
        if self._retiring is not None or self._leaving:
            raise Retired(f"this session actor of {self.user_id} has handed over")
        self._admitting += 1
        try:
            await self.ready()
            self._touch()
            yield
        finally:
            self._admitting -= 1

    def _bound_user(self) -> str:
        if self.user_id is None:
            raise NotBound(NOT_BOUND)
        return self.user_id

    def _drop_user(self) -> None:
        self.user_id = None
        del self.budget, self.datasets, self.chat, self.predecessors

    # Lifecycle ---------------------------------------------------------------------------

    async def hold_while_running(self, token: str) -> None:
        """Held by a task gateway while it runs a load or query of this actor's: returns when
        that call has ended, and fails when this actor dies, which stops the task
        (`actors.gateway`). Not work: it neither starts nor touches the actor."""
        await gateway.hold(token)

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
        if self._handover is not None:
            await asyncio.shield(self._handover)  # what the previous actor runs, known first
        await asyncio.to_thread(self.budget.load)
        if not self.predecessors and self.predecessors.may_sweep:  # else they write the rows
            await asyncio.to_thread(self._sweep)
        self._spawn(self._housekeeping())
        self._spawn(self._wake_edges())
        self._model_prepared = self._spawn(self._prepare_model())

    async def _prepare_model(self) -> None:
        """The model's SDK imported and its client built now, in the background, not at the
        user's first message (≈ 0.5 CPU-s; a spare did it in `warm`, an actor started for a
        user who was not given a spare does it here, while the user's first call returns)."""
        try:
            await asyncio.to_thread(import_provider, self.settings)
            self.chat.llm()  # on the loop: the client's async parts belong to it
        except Exception:  # e.g. no model key: the first turn reports it properly
            log.debug("model client not prepared at start", exc_info=True)

    def _sweep(self) -> None:
        """Rows a previous actor left open when it died end as interrupted."""
        self.datasets.fail_orphaned_loads()
        self.chat.answers.close_orphaned()

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
            "piped": len(self._pumps),  # of them, through an event pipe (actors/event_pipe.py)
            "edges": sorted(self.fanout.edges()),
            "running_turns": self.chat.running_count() if bound else 0,
            "loading": self.datasets.running_count() if bound else 0,
            "polars_loaded": "polars" in sys.modules,  # must stay False (see actors/tasks.py)
            "sqlglot_loaded": "sqlglot" in sys.modules,  # also False: SQL is checked in the task
            # What actors/keep_out.py keeps out of this process: must stay empty.
            "kept_out_loaded": sorted(m for m in KEPT_OUT if m in sys.modules),
            "warm_start": bool(self._edge),  # started ahead of demand by an edge's pool
            "version": self.version,  # of the deploy it started with (actors/version.py)
            "retiring": self._retiring is not None,
            "taking_over": bool(self.predecessors) if bound else False,
            # Only the configured provider's SDK is ever imported (actors/llm.py make_client).
            "model_sdks_loaded": sorted(m for m in ("google.genai", "openai") if m in sys.modules),
        }

    def is_idle(self) -> bool:
        """No turn, no load and no call for ACTOR_IDLE_TIMEOUT_S; open sockets do not count."""
        return self._idle_for(self.settings.actor_idle_timeout_s)

    def _idle_for(self, seconds: float) -> bool:
        """No turn, no load, no call under way and none for `seconds`. Not while an actor it
        took over from still runs (its binding must stay the user's)."""
        busy = (
            self._admitting
            or self.chat.running_count()
            or self.datasets.running_count()
            or self.predecessors
        )
        return not busy and time.monotonic() - self._last_active >= seconds

    async def leave_if_idle(self, min_idle_s: float) -> bool:
        """Asked by an edge that found every session slot taken (actors/capacity.py): when
        idle for `min_idle_s`, gives the user's binding up and answers True; the edge then ends
        this process (and housekeeping does, should the edge not). New work that reaches it
        from then on goes to a new actor (`Retired`). False: busy, retiring, or not bound."""
        if self._leaving:
            return True
        if self.user_id is None or self._retiring is not None or not self._idle_for(min_idle_s):
            return False
        self._leaving = True  # before any await: no call is admitted from here on
        log.info("session actor for %s leaves early to free a session slot", self.user_id)
        await self._unbind()
        return True

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
            if self._leaving or self.is_idle():
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
                directory.unbind,
                self.user_id,
                self._generation,
                self.settings.ray_namespace,
                _current_actor_name(),
            )
        self._generation = -1

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

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
        if self._closing:  # retired and done: the edge looks for the user's current actor
            return
        async for batch in self._batches(sub_id, since, edge):
            yield batch

    async def subscribe_pipe(
        self,
        sub_id: str,
        since: float,
        edge: str,
        pipe: tuple[str, str, str],
        in_flight: int,
    ) -> bool:
        """`subscribe`, with the batches written to the edge's event pipe (actors/event_pipe.py)
        instead of a Ray stream. `pipe`: the edge's node id, socket path and this
        subscription's secret; `in_flight`: batches it may leave unanswered. Returns once
        subscribed: True, or False when the edge is on another node or the actor has retired
        (the edge then uses `subscribe`)."""
        import ray

        node_id, path, secret = pipe
        if node_id != ray.get_runtime_context().get_node_id():
            return False
        await self.ready()
        if self._closing:
            return False
        reader, writer = await event_pipe.connect(path, sub_id, secret)
        batches = self._batches(sub_id, since, edge)
        out = event_pipe.Pipe(reader, writer, in_flight, lambda: self.fanout.close(sub_id))
        try:
            out.write(await anext(batches))  # registered, with what runs now
        except BaseException:
            writer.close()
            await batches.aclose()
            raise
        pump = self._spawn(out.pump(batches))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)
        return True

    async def _batches(
        self, sub_id: str, since: float, edge: str
    ) -> AsyncGenerator[list[Stamped], None]:
        if edge and edge not in self._watched:
            self._watched.add(edge)
            self._spawn(self._drop_when_gone(edge))
        first = True
        async for batch in self.fanout.stream(sub_id, since, edge):
            if first:  # registered: what runs now, before any of its events
                first = False
                running = {
                    "type": IN_FLIGHT,
                    "turns": self.chat.running_messages(),
                    "loads": self.datasets.running_loads(),
                }
                batch = [(0.0, running), *batch]
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
        async with self._new_work():
            return await self.datasets.add(conversation_id, url)

    @from_edge
    async def refresh_dataset(self, conversation_id: str, dataset_id: str) -> dict[str, Any]:
        async with self._new_work():
            return await self.datasets.refresh(conversation_id, dataset_id)

    # Chat --------------------------------------------------------------------------------

    @from_edge
    async def post_message(self, conversation_id: str, content: str) -> dict[str, Any]:
        async with self._new_work():
            if self.predecessors:  # their turns that ended since free their conversations
                await self.predecessors.refresh()
            return await self.chat.post(conversation_id, content)

    @from_edge
    async def stop(self, conversation_id: str) -> bool:
        self._touch()
        if await self.chat.stop(conversation_id):
            return True
        return any(await self.predecessors.forward("stop", conversation_id))

    @from_edge
    async def forget_conversation(self, conversation_id: str) -> None:
        """Cancels work on a conversation that is being deleted."""
        await self.chat.stop(conversation_id)
        self.datasets.cancel_conversation(conversation_id)
        await self.predecessors.forward("forget_conversation", conversation_id)

    @from_edge
    async def forget_dataset(self, dataset_id: str) -> bool:
        """Cancels the load of a dataset that is being deleted (False: none was running)."""
        if self.datasets.cancel_load(dataset_id):
            return True
        return any(await self.predecessors.forward("forget_dataset", dataset_id))

    @from_edge
    async def query(self, conversation_id: str, sql: str) -> dict[str, Any]:
        async with self._new_work():
            return await self.chat.query(conversation_id, sql)

    @from_edge
    async def usage(self) -> dict[str, Any]:
        async with self._new_work():
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
