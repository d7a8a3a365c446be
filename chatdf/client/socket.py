"""The event socket: `/ws?token=...`, JSON pings answered, frames parsed into `chatdf.events`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any, get_args
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from chatdf.client.errors import ConnectionFailed, NotSignedIn, ProtocolError
from chatdf.events import Ping, ServerEvent, server_event_adapter

TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)
CLOSE_UNAUTHORIZED = 4001  # the contract's close code for a missing, unknown or expired token
MAX_FRAME_BYTES = 16 * 1024 * 1024  # a chat_complete carries the whole answer
PONG = json.dumps({"type": "pong"})


def _event_types() -> frozenset[str]:
    union = get_args(ServerEvent)[0]  # Annotated[Union[...], Field(discriminator=...)]
    return frozenset(model.model_fields["type"].default for model in get_args(union))


KNOWN_TYPES = _event_types()


class _RedactTokens(logging.Filter):
    """websockets logs the request line at DEBUG, and the token rides in its query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg, record.args = TOKEN_IN_TEXT.sub(r"\1[redacted]", message), None
        return True


socket_log = logging.getLogger("chatdf.client.socket")
socket_log.addFilter(_RedactTokens())


class SocketDropped(ConnectionFailed):
    """The socket closed or could not be opened for a reason a reconnect may cure."""


def ws_url_of(base_url: str) -> str:
    """`http://host:port/prefix` → `ws://host:port/prefix/ws` (https → wss)."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


def parse_frame(text: str | bytes) -> ServerEvent | None:
    """The event of a frame; None for a type this client does not know (the contract says
    clients ignore those). A known type with fields the contract forbids is a ProtocolError."""
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise ProtocolError("The server sent a frame that is not JSON", str(exc)[:200]) from exc
    if not isinstance(data, dict) or data.get("type") not in KNOWN_TYPES:
        return None
    try:
        return server_event_adapter.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(f"The server sent a malformed {data['type']} event", str(exc)) from exc


class EventSocket:
    """One open `/ws` connection. `next_event()` answers pings itself and skips unknown types."""

    def __init__(self, ws_url: str, token: str, open_timeout_s: float = 30.0) -> None:
        self._url = f"{ws_url}?token={quote(token, safe='')}"
        self._open_timeout_s = open_timeout_s
        self._ws: ClientConnection | None = None

    async def open(self) -> EventSocket:
        try:
            self._ws = await connect(
                self._url,
                open_timeout=self._open_timeout_s,
                max_size=MAX_FRAME_BYTES,
                logger=socket_log,
            )
        except InvalidStatus as exc:
            code = exc.response.status_code
            if code in (401, 403):
                raise NotSignedIn(code, "The server refused the socket's token") from exc
            raise SocketDropped("The server refused the socket", f"HTTP {code}") from exc
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise SocketDropped("Cannot open the event socket", _describe(exc)) from exc
        return self

    async def next_event(self) -> ServerEvent:
        """The next event worth a caller's attention (never a ping)."""
        assert self._ws is not None, "open() first"
        while True:
            try:
                frame = await self._ws.recv()
            except ConnectionClosed as closed:
                raise _closed_error(closed) from closed
            event = parse_frame(frame)
            if isinstance(event, Ping):
                await self._pong()
            elif event is not None:
                return event

    async def _pong(self) -> None:
        assert self._ws is not None
        try:
            await self._ws.send(PONG)
        except ConnectionClosed as closed:
            raise _closed_error(closed) from closed

    async def close(self) -> None:
        if self._ws is not None:
            ws, self._ws = self._ws, None
            with contextlib.suppress(OSError, TimeoutError, WebSocketException):
                await asyncio.wait_for(ws.close(), 5)  # it is going away either way

    async def __aenter__(self) -> EventSocket:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _closed_error(closed: ConnectionClosed) -> Exception:
    code = closed.rcvd.code if closed.rcvd else None
    if code == CLOSE_UNAUTHORIZED:
        return NotSignedIn(401, "Not signed in", "the server closed the event socket (4001)")
    return SocketDropped("The event socket closed", f"close code {code}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
