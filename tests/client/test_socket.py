"""The event socket against a scripted websockets server: JSON pings answered with pongs,
unknown types skipped, a malformed event refused, 4001 and a drop told apart."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve

from chatdf.client.errors import NotSignedIn, ProtocolError
from chatdf.client.socket import EventSocket, SocketDropped, ws_url_of
from chatdf.events import ChatToken

Handler = Callable[[ServerConnection], Awaitable[None]]
TOKEN = {"type": "chat_token", "conversation_id": "c", "message_id": "m", "token": "hi"}


async def scripted(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


@pytest.fixture
def received() -> list[str]:
    return []


async def test_pings_are_answered_and_unknown_types_skipped(received: list[str]) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "ping"}))
        received.append(str(await asyncio.wait_for(ws.recv(), 10)))  # the client's answer
        await ws.send(json.dumps({"type": "from_a_newer_server", "x": 1}))
        await ws.send(json.dumps(TOKEN))
        await ws.close(4001)

    async for url in scripted(handler):
        async with EventSocket(url, "t") as sock:
            event = await sock.next_event()
            with pytest.raises(NotSignedIn):
                await sock.next_event()
    assert received == ['{"type": "pong"}']
    assert isinstance(event, ChatToken) and event.token == "hi"


async def test_a_malformed_known_event_is_a_protocol_error() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "chat_token", "token": "no ids"}))
        await ws.wait_closed()

    async for url in scripted(handler):
        async with EventSocket(url, "t") as sock:
            with pytest.raises(ProtocolError, match="malformed chat_token"):
                await sock.next_event()


async def test_a_close_other_than_4001_is_a_drop_to_reconnect_after() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(1012)  # service restart

    async for url in scripted(handler):
        async with EventSocket(url, "t") as sock:
            with pytest.raises(SocketDropped, match="closed"):
                await sock.next_event()


async def test_an_unreachable_server_is_a_drop() -> None:
    with pytest.raises(SocketDropped, match="Cannot open"):
        await EventSocket("ws://127.0.0.1:9/ws", "t", open_timeout_s=5).open()


def test_ws_url_of_keeps_a_path_prefix_and_secures_https() -> None:
    assert ws_url_of("http://h:8000") == "ws://h:8000/ws"
    assert ws_url_of("https://h/chat/") == "wss://h/chat/ws"


async def test_the_token_never_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(json.dumps(TOKEN))

    caplog.set_level(logging.DEBUG)
    async for url in scripted(handler):
        async with EventSocket(url, "s3cret-token") as sock:
            await sock.next_event()
    client_lines = [r.getMessage() for r in caplog.records if r.name == "chatdf.client.socket"]
    assert any("GET /ws?token=[redacted]" in line for line in client_lines), client_lines
    assert not any("s3cret-token" in line for line in client_lines)  # (the fake server logs it)
