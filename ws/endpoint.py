"""The `/ws` endpoint: authenticate, register, heartbeat, and ignore what clients send."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from api.checks import SessionChecker
from api.deps import token_from
from chatdf.settings import Settings
from chatdf.store import hash_secret
from ws.connections import Connection, ConnectionManager
from ws.origins import origin_allowed
from ws.protocol import EXTENSION

log = logging.getLogger(__name__)

router = APIRouter()

CLOSE_UNAUTHORIZED = 4001
CLOSE_STALE = 4000
CLOSE_TOO_BIG = 1009
PING = json.dumps({"type": "ping"})


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket, token: str | None = None) -> None:
    """Streams the user's events; closes with 4001 when the session is missing or invalid."""
    settings: Settings = websocket.app.state.settings
    checker: SessionChecker = websocket.app.state.session_check
    manager: ConnectionManager = websocket.app.state.connection_manager
    raw, source = token_from(websocket, token)
    user = await checker.check(raw)
    if source == "cookie" and not origin_allowed(websocket, settings):
        user = None  # no Origin is no allowed origin either (the contract asks for one)
    if user is None:
        # Accept first: a close before accept reaches the client as a bare HTTP 403.
        await websocket.accept()
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason="unauthorized")
        return
    # Registered before the accept (so a client that sees the handshake is already counted),
    # and never waiting on the user's session actor: the subscription follows in the background.
    conn = manager.connect(user.id, websocket, token_hash=hash_secret(raw))
    try:
        await websocket.accept()
        manager.start_writer(conn)
        await serve(conn, manager, settings)
    finally:
        await manager.disconnect(conn)


async def serve(conn: Connection, manager: ConnectionManager, settings: Settings) -> None:
    """Pings every HEARTBEAT_INTERVAL; closes a socket silent for HEARTBEAT_TIMEOUT."""
    pinger = asyncio.create_task(ping_forever(conn, manager, settings.heartbeat_interval))
    try:
        await receive_until_stale(conn, settings)
    finally:
        pinger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pinger


async def ping_forever(conn: Connection, manager: ConnectionManager, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        if not manager.enqueue(conn, PING):
            return


async def receive_until_stale(conn: Connection, settings: Settings) -> None:
    """Reads (and ignores) client frames until the client goes or has been silent too long.

    Silent means: no frame and no protocol-level pong (or any other byte) for
    HEARTBEAT_TIMEOUT. uvicorn pings every HEARTBEAT_INTERVAL and browsers answer by themselves,
    so a live browser tab passes without ever sending a JSON `pong`.
    """
    ws = conn.websocket
    transport = ws.scope.get("extensions", {}).get(EXTENSION)  # absent under other servers
    loop = asyncio.get_running_loop()
    heard = loop.time()
    while True:
        if transport is not None:
            heard = max(heard, transport.last_heard())
        left = settings.heartbeat_timeout - (loop.time() - heard)
        if left <= 0:
            with contextlib.suppress(Exception):
                await ws.close(code=CLOSE_STALE, reason="heartbeat timeout")
            return
        try:
            message = await asyncio.wait_for(ws.receive(), timeout=left)
        except TimeoutError:
            continue  # look again: a protocol-level pong may have come meanwhile
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        heard = loop.time()
        size = len(message.get("text") or message.get("bytes") or b"")
        if size > settings.ws_max_frame_bytes:
            with contextlib.suppress(Exception):
                await ws.close(code=CLOSE_TOO_BIG, reason="frame too large")
            return
        # Pongs and anything else only prove the client is alive; the content is ignored.
