"""The `/ws` endpoint: authenticate, register, heartbeat, and ignore what clients send."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from api.deps import authenticate, token_from
from chatdf.db import Database
from chatdf.settings import Settings
from ws.connections import Connection, ConnectionManager

log = logging.getLogger(__name__)

router = APIRouter()

CLOSE_UNAUTHORIZED = 4001
CLOSE_STALE = 4000
CLOSE_TOO_BIG = 1009
CLOSE_UNAVAILABLE = 1011


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket, token: str | None = None) -> None:
    """Streams the user's events; closes with 4001 when the session is missing or invalid."""
    settings: Settings = websocket.app.state.settings
    db: Database = websocket.app.state.db
    manager: ConnectionManager = websocket.app.state.connection_manager
    raw, source = token_from(websocket, token)
    user = await asyncio.to_thread(authenticate, db, settings, raw)
    origin = websocket.headers.get("origin")
    if source == "cookie" and origin not in settings.allowed_origins:
        user = None  # no Origin is no allowed origin either (the contract asks for one)
    if user is None:
        # Accept first: a close before accept reaches the client as a bare HTTP 403.
        await websocket.accept()
        await websocket.close(code=CLOSE_UNAUTHORIZED, reason="unauthorized")
        return
    try:
        # Subscribe before accepting, so every event after the handshake reaches this socket.
        conn = await manager.connect(user.id, websocket)
    except Exception:
        log.exception("could not subscribe to the session actor")
        await websocket.accept()
        await websocket.close(code=CLOSE_UNAVAILABLE, reason="session unavailable")
        return
    try:
        await websocket.accept()
        await serve(conn, settings)
    finally:
        await manager.disconnect(conn)


async def serve(conn: Connection, settings: Settings) -> None:
    """Pings every HEARTBEAT_INTERVAL; closes a socket silent for HEARTBEAT_TIMEOUT."""
    pinger = asyncio.create_task(ping_forever(conn, settings.heartbeat_interval))
    try:
        await receive_until_stale(conn, settings)
    finally:
        pinger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pinger


async def ping_forever(conn: Connection, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with conn.send_lock:
                await conn.websocket.send_text(json.dumps({"type": "ping"}))
        except Exception:
            return


async def receive_until_stale(conn: Connection, settings: Settings) -> None:
    ws = conn.websocket
    while True:
        try:
            message = await asyncio.wait_for(ws.receive(), timeout=settings.heartbeat_timeout)
        except TimeoutError:
            with contextlib.suppress(Exception):
                await ws.close(code=CLOSE_STALE, reason="heartbeat timeout")
            return
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        size = len(message.get("text") or message.get("bytes") or b"")
        if size > settings.ws_max_frame_bytes:
            with contextlib.suppress(Exception):
                await ws.close(code=CLOSE_TOO_BIG, reason="frame too large")
            return
        # Pongs and anything else only prove the client is alive; the content is ignored.
