"""The edge's registry of open sockets per user, their send queues, and its subscription to each
user's session actor (when one runs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket
from ray.exceptions import ActorUnavailableError, RayActorError
from starlette.websockets import WebSocketState

from actors.directory import find_streaming_many
from actors.edges import start_hub
from actors.fanout import IN_FLIGHT, TICK_S, Stamped
from actors.session_client import subscribe, unsubscribe
from chatdf.coalesce import Coalescer
from chatdf.settings import Settings
from ws.event_pipe import EventPipes, PipeBroken
from ws.inflight import InFlight
from ws.protocol import EXTENSION

log = logging.getLogger(__name__)

RESUBSCRIBE_DELAY_S = 0.5
LOOKUP_THREADS = 1  # finds users' actors, a batch at a time; sign-in checks use the loop's own
LOOKUP_BATCH_MAX = 1000
CLOSE_TOO_SLOW = 4002
CLOSE_DEADLINE_S = 1.0  # a close frame a stalled peer does not take: the connection is aborted


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


@dataclass(eq=False)
class Connection:
    """One socket: the frames waiting for it, and the task writing them in order."""

    user_id: str
    websocket: WebSocket
    queue_max: int
    token_hash: str = ""  # of the sign-in session it was opened with (ws/sessions.py)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    accepted_at: float = field(default_factory=time.time)  # actor events before it are not sent
    closed: bool = False
    writer: asyncio.Task[None] | None = None
    outbox: asyncio.Queue[str] = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = asyncio.Queue(self.queue_max)


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


class ConnectionManager:
    """Open sockets by user, and one subscription per user to that user's session actor.

    Sockets never wait on an actor: they are registered at once, and a user's follower subscribes
    when the actor exists, or when this edge's hub (actors/edges.py) says one started. Each
    socket has its own bounded send queue and writer, so one stalled tab holds up no other tab;
    a socket whose queue fills or whose write takes over WS_SEND_TIMEOUT_S is closed and dropped.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub_name = ""
        self._hub: Any = None
        self._hub_task: asyncio.Task[None] | None = None
        self._connections: dict[str, set[Connection]] = {}
        self._subscriptions: dict[str, Follower] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._lookups = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="actor-lookup")
        self._directory = Coalescer(
            self._running_actors, max_batch=LOOKUP_BATCH_MAX, executor=self._lookups
        )
        self.on_batch: Callable[[list[Stamped]], None] = _ignore  # metrics (api/metrics.py)
        self.pipes: EventPipes | None = None  # same-node actors' events (EVENT_PIPE)

    # Life of the edge ----------------------------------------------------------------------

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

    async def close_all(self) -> None:
        for user_id in list(self._connections):
            await self.close_user(user_id, code=1001, reason="server shutting down")
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

    # Sockets -------------------------------------------------------------------------------

    def count(self, user_id: str) -> int:
        return len(self._connections.get(user_id, ()))

    def open_count(self) -> int:
        """Sockets open on this edge, all users."""
        return sum(len(conns) for conns in self._connections.values())

    def connect(self, user_id: str, websocket: WebSocket, token_hash: str = "") -> Connection:
        """Registers a socket about to be accepted; never waits on the user's actor."""
        conn = Connection(user_id, websocket, self.settings.ws_send_queue_max, token_hash)
        self._connections.setdefault(user_id, set()).add(conn)
        follower = self._subscriptions.get(user_id)
        if follower is None or follower.task is None or follower.task.done():
            if follower is not None:
                self._end_streams(follower)
            follower = self._subscriptions[user_id] = Follower()
            follower.task = asyncio.create_task(self._follow(user_id, follower))
        return conn

    def start_writer(self, conn: Connection) -> None:
        """Starts writing the socket's queued frames (once it is accepted)."""
        if not conn.closed and conn.writer is None:
            conn.writer = asyncio.create_task(self._write(conn))

    async def disconnect(self, conn: Connection) -> None:
        """Forgets a socket; the user's last socket also ends the actor subscription."""
        conn.closed = True
        if conn.writer is not None and conn.writer is not asyncio.current_task():
            conn.writer.cancel()
        conns = self._connections.get(conn.user_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._connections[conn.user_id]
                self._unsubscribe(conn.user_id)

    def enqueue(self, conn: Connection, text: str) -> bool:
        """Queues one frame for a socket; a socket that far behind is dropped (False)."""
        if conn.closed:
            return False
        try:
            conn.outbox.put_nowait(text)
            return True
        except asyncio.QueueFull:
            self._spawn(self._drop(conn, f"{conn.outbox.qsize()} frames behind"))
            return False

    async def send_to_user(self, user_id: str, event: dict[str, Any]) -> int:
        """Queues one event for every open socket of the user; returns how many took it."""
        text = dumps(event)
        return sum(self.enqueue(conn, text) for conn in list(self._connections.get(user_id, ())))

    def open_token_hashes(self) -> set[str]:
        """The sign-in sessions behind the open sockets."""
        return {c.token_hash for conns in self._connections.values() for c in conns if c.token_hash}

    async def close_sessions(self, token_hashes: set[str], code: int, reason: str) -> int:
        """Closes every socket opened with one of these sessions; returns how many."""
        ended = [
            conn
            for conns in list(self._connections.values())
            for conn in list(conns)
            if conn.token_hash in token_hashes
        ]
        for conn in ended:
            await self.disconnect(conn)
            await self._close(conn, code, reason)
        return len(ended)

    async def close_user(self, user_id: str, code: int = 1000, reason: str = "") -> None:
        """Closes every socket of a user from the server side and cleans up."""
        for conn in list(self._connections.get(user_id, ())):
            await self.disconnect(conn)
            await self._close(conn, code, reason)

    async def _write(self, conn: Connection) -> None:
        ws = conn.websocket
        try:
            while True:
                text = await conn.outbox.get()
                if ws.application_state != WebSocketState.CONNECTED:
                    break
                await asyncio.wait_for(ws.send_text(text), self.settings.ws_send_timeout_s)
        except TimeoutError:
            await self._drop(conn, f"a frame waited {self.settings.ws_send_timeout_s} s")
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("send to a closing socket failed; dropping it")
        await self.disconnect(conn)

    async def _drop(self, conn: Connection, why: str) -> None:
        if conn.closed:
            return
        log.warning("socket of user %s is not reading (%s); closed", conn.user_id, why)
        await self.disconnect(conn)
        await self._close(conn, CLOSE_TOO_SLOW, "client too slow")

    @staticmethod
    async def _close(conn: Connection, code: int, reason: str) -> None:
        """Sends a close frame; a peer that does not take it within a second is cut off."""
        try:
            await asyncio.wait_for(conn.websocket.close(code=code, reason=reason), CLOSE_DEADLINE_S)
        except TimeoutError:
            handle = conn.websocket.scope.get("extensions", {}).get(EXTENSION)
            if handle is not None:
                handle.abort()
        except Exception:
            log.debug("closing a socket that is already gone")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # Subscriptions -------------------------------------------------------------------------

    def _unsubscribe(self, user_id: str) -> None:
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
                self._spawn(self._tell_actor_unsubscribed(stream.handle, stream.sub_id))
        follower.streams.clear()

    @staticmethod
    async def _tell_actor_unsubscribed(handle: Any, sub_id: str) -> None:
        with contextlib.suppress(Exception):  # it just exited: nothing to end
            await asyncio.wait_for(unsubscribe(handle, sub_id), timeout=5)

    async def _lookup(self, user_id: str) -> list[Any]:
        """The user's live actors (this never starts one): one, or two during a handover.

        Looked up on this edge's own threads, so a burst of new sockets' lookups (Ray GCS
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
        conns = self._connections.get(user_id)
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
            for conn in list(self._connections.get(user_id, ())):
                self.enqueue(conn, text)

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
            for conn in list(self._connections.get(user_id, ())):
                if stamp >= conn.accepted_at:  # nothing from before a socket's accept
                    self.enqueue(conn, text)
        return delivered


def _ignore(batch: list[Stamped]) -> None:
    return None
