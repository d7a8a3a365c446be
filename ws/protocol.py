"""The uvicorn WebSocket protocol the edge serves on: it tells the app when the client was last
heard from (protocol-level pongs included, which browsers send by themselves) and lets the app
abort a connection whose peer stopped reading."""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from chatdf.settings import Settings

EXTENSION = "chatdf.connection"  # the key of a ConnectionHandle in scope["extensions"]


class ConnectionHandle:
    """What the app sees of its connection's transport."""

    def __init__(self, protocol: ChatdfWebSocketProtocol) -> None:
        self._protocol = protocol

    def last_heard(self) -> float:
        """The event-loop time (`loop.time()`) at which the client last sent any bytes."""
        return self._protocol.last_heard

    def abort(self) -> None:
        """Drops the TCP connection at once, without flushing (the peer does not read)."""
        self._protocol.transport.abort()


class ChatdfWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, noting the time of every byte the client sends.

    uvicorn answers and sends protocol-level pings itself and does not tell the ASGI app about
    pongs; the app's heartbeat counts them as liveness through `ConnectionHandle.last_heard`.
    """

    last_heard: float = 0.0

    def data_received(self, data: bytes) -> None:
        self.last_heard = self.loop.time()
        super().data_received(data)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)  # absent when the upgrade was refused
        if scope is not None:
            scope["extensions"][EXTENSION] = ConnectionHandle(self)


def uvicorn_ws_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config arguments for the WebSocket side, shared by `chatdf serve` and the tests.

    uvicorn sends a protocol-level ping every HEARTBEAT_INTERVAL (browsers answer those by
    themselves) and closes nothing on its own (`ws_ping_timeout=None`): the app's heartbeat rule
    (see ws/endpoint.py) decides, so a silent socket always ends with 4000.
    """
    return {
        "ws": ChatdfWebSocketProtocol,
        "ws_ping_interval": settings.heartbeat_interval,
        "ws_ping_timeout": None,
        "ws_max_size": settings.ws_max_frame_bytes,
    }
