"""The edge's registry of open sockets per user and their send queues; the events of each user's
session actor reach them through the user's follower (ws/following.py)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketState

from chatdf.settings import Settings
from ws.following import Following, dumps
from ws.protocol import EXTENSION

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 4002
CLOSE_DEADLINE_S = 1.0  # a close frame a stalled peer does not take: the connection is aborted


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


class ConnectionManager:
    """Open sockets by user, and one follower per user of that user's session actor.

    Sockets never wait on an actor: they are registered at once, and a user's follower subscribes
    when the actor exists, or when this edge's hub (actors/edges.py) says one started. Each
    socket has its own bounded send queue and writer, so one stalled tab holds up no other tab;
    a socket whose queue fills or whose write takes over WS_SEND_TIMEOUT_S is closed and dropped.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connections: dict[str, set[Connection]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.following = Following(settings, self)  # the users' actors' events (ws/following.py)

    # Life of the edge ----------------------------------------------------------------------

    async def start(self, version: str = "", number: int = 0) -> None:
        """Starts following users' actors: this edge's hub (it dies with the process) and
        its wake-ups. `version`, `number`: the edge's deploy and start number, in the hub's
        name."""
        await self.following.start(version, number)

    @property
    def hub_name(self) -> str:
        return self.following.hub_name

    async def close_all(self) -> None:
        for user_id in list(self._connections):
            await self.close_user(user_id, code=1001, reason="server shutting down")
        await self.following.close()

    # Sockets -------------------------------------------------------------------------------

    def of(self, user_id: str) -> set[Connection]:
        """The user's open sockets on this edge."""
        return self._connections.get(user_id, set())

    def count(self, user_id: str) -> int:
        return len(self.of(user_id))

    def open_count(self) -> int:
        """Sockets open on this edge, all users."""
        return sum(len(conns) for conns in self._connections.values())

    def connect(self, user_id: str, websocket: WebSocket, token_hash: str = "") -> Connection:
        """Registers a socket about to be accepted; never waits on the user's actor."""
        conn = Connection(user_id, websocket, self.settings.ws_send_queue_max, token_hash)
        self._connections.setdefault(user_id, set()).add(conn)
        self.following.follow(user_id)
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
                self.following.stop(conn.user_id)

    def enqueue(self, conn: Connection, text: str) -> bool:
        """Queues one frame for a socket; a socket that far behind is dropped (False)."""
        if conn.closed:
            return False
        try:
            conn.outbox.put_nowait(text)
            return True
        except asyncio.QueueFull:
            self.spawn(self._drop(conn, f"{conn.outbox.qsize()} frames behind"))
            return False

    async def send_to_user(self, user_id: str, event: dict[str, Any]) -> int:
        """Queues one event for every open socket of the user; returns how many took it."""
        text = dumps(event)
        return sum(self.enqueue(conn, text) for conn in list(self.of(user_id)))

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
        for conn in list(self.of(user_id)):
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

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # Subscriptions -------------------------------------------------------------------------
