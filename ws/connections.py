"""The edge's registry of open sockets per user and its subscription to each user's actor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketState

from actors.session import get_session_actor
from chatdf.settings import Settings

log = logging.getLogger(__name__)

RESUBSCRIBE_DELAY_S = 0.5


@dataclass(eq=False)
class Connection:
    user_id: str
    websocket: WebSocket
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ConnectionManager:
    """Open sockets by user, and one subscription per user to that user's session actor.

    The edge keeps nothing else about a user: events come from the actor's stream and are written
    to every socket (tab) of the user, in order; when the last socket goes, so does the stream.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connections: dict[str, set[Connection]] = {}
        self._subscriptions: dict[str, tuple[str, asyncio.Task[None], asyncio.Future[None]]] = {}

    def count(self, user_id: str) -> int:
        return len(self._connections.get(user_id, ()))

    async def connect(self, user_id: str, websocket: WebSocket) -> Connection:
        """Registers a socket; the first socket of a user starts the actor subscription."""
        conn = Connection(user_id, websocket)
        self._connections.setdefault(user_id, set()).add(conn)
        if user_id not in self._subscriptions:
            started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            sub_id = uuid.uuid4().hex
            task = asyncio.create_task(self._follow(user_id, sub_id, started))
            self._subscriptions[user_id] = (sub_id, task, started)
        ready = self._subscriptions[user_id][2]
        try:
            # A second tab arriving while the first subscribes waits for the same stream.
            await asyncio.shield(ready)
        except Exception:
            await self.disconnect(conn)
            raise
        return conn

    async def disconnect(self, conn: Connection) -> None:
        """Forgets a socket; the user's last socket also ends the actor subscription."""
        conns = self._connections.get(conn.user_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._connections[conn.user_id]
                await self._unsubscribe(conn.user_id)

    async def send_to_user(self, user_id: str, event: dict[str, Any]) -> int:
        """Writes one event to every open socket of the user; returns how many got it."""
        sent = 0
        for conn in list(self._connections.get(user_id, ())):
            if await self._send(conn, [event]):
                sent += 1
        return sent

    async def close_user(self, user_id: str, code: int = 1000, reason: str = "") -> None:
        """Closes every socket of a user from the server side and cleans up."""
        for conn in list(self._connections.get(user_id, ())):
            with contextlib.suppress(Exception):
                await conn.websocket.close(code=code, reason=reason)
            await self.disconnect(conn)

    async def close_all(self) -> None:
        for user_id in list(self._connections):
            await self.close_user(user_id, code=1001, reason="server shutting down")

    async def _send(self, conn: Connection, batch: list[dict[str, Any]]) -> bool:
        if conn.websocket.application_state != WebSocketState.CONNECTED:
            return False
        try:
            async with conn.send_lock:
                for event in batch:
                    await conn.websocket.send_json(event)
            return True
        except Exception:
            log.debug("send to a closing socket failed; dropping it")
            await self.disconnect(conn)
            return False

    async def _unsubscribe(self, user_id: str) -> None:
        entry = self._subscriptions.pop(user_id, None)
        if entry is None:
            return
        sub_id, task, _ready = entry
        with contextlib.suppress(Exception):
            handle = await asyncio.to_thread(get_session_actor, user_id, self.settings)
            await asyncio.wait_for(handle.unsubscribe.remote(sub_id), timeout=5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _follow(self, user_id: str, sub_id: str, ready: asyncio.Future[None]) -> None:
        """Streams the actor's event batches to the user's sockets until unsubscribed.

        If the actor goes away (reaped, crashed, restarted) while sockets remain, subscribe
        again: events published in between are missed, as on any reconnect (no replay).
        """
        while user_id in self._connections:
            try:
                handle = await asyncio.to_thread(get_session_actor, user_id, self.settings)
                stream = handle.subscribe.options(num_returns="streaming").remote(sub_id)
                async for ref in stream:
                    batch: list[dict[str, Any]] = await ref
                    if not ready.done():
                        ready.set_result(None)
                    for conn in list(self._connections.get(user_id, ())):
                        await self._send(conn, batch)
                if self._subscriptions.get(user_id, ("",))[0] != sub_id:
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not ready.done():
                    ready.set_exception(exc)
                    return
                log.warning("event stream of user %s broke (%s); resubscribing", user_id, exc)
            await asyncio.sleep(RESUBSCRIBE_DELAY_S)
