"""The edge's subscriptions to its users' session actors: one follower per user with sockets on
this edge, streaming the events of the user's actor (when one runs) into those sockets' queues,
and woken by this edge's hub (actors/edges.py) when an actor of the user starts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator, Callable, Collection, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from ray.exceptions import ActorUnavailableError, RayActorError

from actors.directory import find_streaming_many
from actors.edges import start_hub
from actors.fanout import IN_FLIGHT, TICK_S, Stamped
from actors.session_client import subscribe, unsubscribe
from chatdf.coalesce import Coalescer
from chatdf.settings import Settings
from ws.event_pipe import EventPipes, PipeBroken
from ws.inflight import InFlight

log = logging.getLogger(__name__)

RESUBSCRIBE_DELAY_S = 0.5
LOOKUP_THREADS = 1  # finds users' actors, a batch at a time; sign-in checks use the loop's own
LOOKUP_BATCH_MAX = 1000


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


class Sockets(Protocol):
    """What the followers need of the edge's socket registry (ws/connections.py)."""

    def of(self, user_id: str) -> Collection[Any]:
        """The user's open sockets here (each with its `accepted_at`)."""
        ...

    def enqueue(self, conn: Any, text: str) -> bool: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...


@dataclass(eq=False)
class ActorStream:
    """The edge's subscription to one session actor of a user."""

    handle: Any
    sub_id: str = ""
    last_stamp: float = 0.0  # of the last actor event received (resubscribing continues after it)
    task: asyncio.Task[None] | None = None
    inflight: InFlight = field(default_factory=InFlight)  # turns and loads the stream left open


@dataclass(eq=False)
class Follower:
    """The edge's streams from one user's actors: woken when an actor for the user starts.

    Usually one actor; during a deploy's handover also the older deploy's actor, whose running
    turns go on streaming from it until it exits (actors/session.py, SessionActor.retire).
    """

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    streams: dict[str, ActorStream] = field(default_factory=dict)  # by actor id
    task: asyncio.Task[None] | None = None


class Following:
    """One follower per user with sockets here, and this edge's hub.

    A follower subscribes when the user's actor exists, or when the hub says one started; with
    no actor it waits, holding nothing. Events go into the sockets' own queues (`Sockets.enqueue`),
    so a stalled tab holds up no other tab.
    """

    def __init__(self, settings: Settings, sockets: Sockets) -> None:
        self.settings = settings
        self.hub_name = ""
        self._sockets = sockets
        self._hub: Any = None
        self._hub_task: asyncio.Task[None] | None = None
        self._subscriptions: dict[str, Follower] = {}
        self._lookups = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="actor-lookup")
        self._directory = Coalescer(
            self._running_actors, max_batch=LOOKUP_BATCH_MAX, executor=self._lookups
        )
        self.on_batch: Callable[[list[Stamped]], None] = _ignore  # metrics (api/metrics.py)
        self.pipes: EventPipes | None = None  # same-node actors' events (EVENT_PIPE)

    async def start(self, version: str = "", number: int = 0) -> None:
        """Creates this edge's hub (it dies with the process) and follows its wake-ups.

        `version`, `number`: the edge's deploy and start number, in the hub's name."""
        self.hub_name, self._hub = await asyncio.to_thread(
            start_hub, self.settings.ray_namespace, version, number
        )
        if self.settings.event_pipe:
            pipes = EventPipes()
            try:
                await pipes.start()
                self.pipes = pipes
            except OSError as exc:  # no Unix socket here (a long TMPDIR, a read-only /tmp)
                log.warning("event pipe not available (%s): events stream through Ray", exc)
                await pipes.close()
        self._hub_task = asyncio.create_task(self._follow_hub())

    async def close(self) -> None:
        if self._hub_task is not None:
            self._hub_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._hub_task
        if self._hub is not None:
            import ray

            with contextlib.suppress(Exception):
                await asyncio.to_thread(ray.kill, self._hub)
        if self.pipes is not None:
            await self.pipes.close()
        self._lookups.shutdown(wait=False, cancel_futures=True)

    def follow(self, user_id: str) -> None:
        """Makes sure the user has a running follower (a socket of theirs just came)."""
        follower = self._subscriptions.get(user_id)
        if follower is None or follower.task is None or follower.task.done():
            if follower is not None:
                self._end_streams(follower)
            follower = self._subscriptions[user_id] = Follower()
            follower.task = asyncio.create_task(self._follow(user_id, follower))

    def stop(self, user_id: str) -> None:
        """Ends the user's follower and its subscriptions (their last socket here closed)."""
        follower = self._subscriptions.pop(user_id, None)
        if follower is None:
            return
        if follower.task is not None:
            follower.task.cancel()
        self._end_streams(follower)

    def _end_streams(self, follower: Follower) -> None:
        for stream in follower.streams.values():
            if stream.task is not None:
                stream.task.cancel()
            if stream.sub_id:
                self._sockets.spawn(self._tell_actor_unsubscribed(stream.handle, stream.sub_id))
        follower.streams.clear()

    @staticmethod
    async def _tell_actor_unsubscribed(handle: Any, sub_id: str) -> None:
        with contextlib.suppress(Exception):  # it just exited: nothing to end
            await asyncio.wait_for(unsubscribe(handle, sub_id), timeout=5)

    async def _lookup(self, user_id: str) -> list[Any]:
        """The user's live actors (this never starts one): one, or two during a handover.

        Looked up on this edge's own lookup thread, so a burst of new sockets' lookups (Ray GCS
        calls) never queues ahead of their sign-in checks, and together: the lookups that
        arrive while one batch is being answered form the next (a burst of 200 sockets is a
        few GCS calls, not 400)."""
        return await self._directory.ask(user_id) or []

    def _running_actors(self, user_ids: list[str]) -> dict[str, list[Any]]:
        return find_streaming_many(user_ids, self.settings.ray_namespace)

    async def _follow_hub(self) -> None:
        """Wakes the followers of users whose actor just started (from this edge's hub)."""
        while True:
            try:
                stream = self._hub.wakeups.options(num_returns="streaming").remote()
                async for ref in stream:
                    users: list[str] = await ref
                    # The first, empty batch: streaming (again); an actor may have started
                    # unseen meanwhile, so every follower looks again.
                    for user_id in users or list(self._subscriptions):
                        follower = self._subscriptions.get(user_id)
                        if follower is not None:
                            follower.wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("wake-up stream of this edge's hub broke (%s); again", exc)
            await asyncio.sleep(RESUBSCRIBE_DELAY_S)

    async def _follow(self, user_id: str, follower: Follower) -> None:
        """Streams the user's actor events to their sockets while the user has sockets.

        With no actor running it waits, holding nothing, until the hub wakes it. When the actor
        exits or dies, the loop looks again: events published while no stream ran are missed,
        as on any reconnect (no replay), except those the new actor's buffer still holds. When
        a new actor takes over from one still finishing its turns, both are streamed.
        """
        while self._subscriptions.get(user_id) is follower:
            follower.wake.clear()  # before looking: a start after this look sets it again
            try:
                found = await self._lookup(user_id)
            except Exception as exc:  # Ray's GCS busy or restarting: look again soon
                log.warning("could not look up the actors of user %s (%s)", user_id, exc)
                await asyncio.sleep(RESUBSCRIBE_DELAY_S)
                continue
            live = {handle._actor_id.hex(): handle for handle in found}
            for key, stream in list(follower.streams.items()):
                if key not in live and (stream.task is None or stream.task.done()):
                    del follower.streams[key]  # an actor that is no longer the user's, ended
            for key, handle in live.items():
                stream = follower.streams.setdefault(key, ActorStream(handle))
                if stream.task is None or stream.task.done():
                    stream.task = asyncio.create_task(self._keep(user_id, follower, stream))
            await follower.wake.wait()

    async def _keep(self, user_id: str, follower: Follower, stream: ActorStream) -> None:
        """One subscription until it ends; then the follower looks again."""
        try:
            if not await self._stream(user_id, stream):
                # The name still resolves but the actor does not answer (it is exiting).
                await asyncio.sleep(RESUBSCRIBE_DELAY_S)
        finally:
            follower.wake.set()

    async def _stream(self, user_id: str, stream: ActorStream) -> bool:
        """One subscription, until it ends; False if it never started."""
        conns = self._sockets.of(user_id)
        if not conns:
            return True
        since = max(min(c.accepted_at for c in conns), stream.last_stamp + TICK_S)
        stream.sub_id = uuid.uuid4().hex
        started = False
        try:
            items = await self._subscribe(stream, since)
            async with contextlib.aclosing(items):
                async for batch in items:
                    started = True
                    self.on_batch(self._deliver(user_id, stream, batch))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("event stream of user %s ended (%s)", user_id, type(exc).__name__)
            died = isinstance(exc, RayActorError) and not isinstance(exc, ActorUnavailableError)
            if died or isinstance(exc, PipeBroken):
                self._report_lost(user_id, stream)  # the actor died: its work will not end
        return started

    async def _subscribe(
        self, stream: ActorStream, since: float
    ) -> AsyncGenerator[list[Stamped], None]:
        """The subscription's batches: through the event pipe when the actor runs on this
        edge's node (ws/event_pipe.py), else through a Ray streaming generator."""
        if self.pipes is not None:
            piped = await self.pipes.subscribe(
                stream.handle,
                stream.sub_id,
                since,
                self.hub_name,
                in_flight=self.settings.subscriber_backpressure,
            )
            if piped is not None:
                return piped
        return subscribe(
            stream.handle,
            stream.sub_id,
            since,
            self.hub_name,
            backpressure=self.settings.subscriber_backpressure,
        )

    def _report_lost(self, user_id: str, stream: ActorStream) -> None:
        for event in stream.inflight.lost():
            text = dumps(event)
            for conn in list(self._sockets.of(user_id)):
                self._sockets.enqueue(conn, text)

    def _deliver(self, user_id: str, stream: ActorStream, batch: list[Stamped]) -> list[Stamped]:
        """Queues the batch's events for the user's sockets; returns those that were events."""
        delivered = []
        for stamp, event in batch:
            stream.inflight.observe(event)
            if event.get("type") == IN_FLIGHT:  # for this edge only (see actors/fanout.py)
                continue
            delivered.append((stamp, event))
            stream.last_stamp = stamp
            text = dumps(event)
            for conn in list(self._sockets.of(user_id)):
                if stamp >= conn.accepted_at:  # nothing from before a socket's accept
                    self._sockets.enqueue(conn, text)
        return delivered


def _ignore(batch: list[Stamped]) -> None:
    return None
