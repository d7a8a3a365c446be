"""A WebSocket client on a bare socket that answers no protocol-level ping and can stop reading.

Real clients (browsers, `websockets`) answer pings by themselves; this one sends nothing after
the handshake unless told, so tests can play a dead peer or a tab that stopped reading.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri


class RawWebSocket:
    """Handshake over a plain TCP socket; frames are read only when a test asks."""

    def __init__(self, url: str, receive_buffer: int | None = None) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        uri = parse_uri(url)
        self.sock = socket.socket()
        if receive_buffer is not None:  # before connect, so the window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect((uri.host, uri.port))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        response = self._next(lambda event: isinstance(event, Response), timeout=30)
        assert isinstance(response, Response) and response.status_code == 101, response

    def _flush(self) -> None:
        self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def _next(self, wanted: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.protocol.events_received():
                if isinstance(event, Frame) and event.opcode == Opcode.CLOSE:
                    self.close_code = Close.parse(event.data).code
                if wanted(event):
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                self.protocol.receive_eof()
                return None
            self.protocol.receive_data(data)  # pongs it would queue are never sent

    def receive_text(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next text frame as JSON; None once the server closed."""
        frame = self._next(
            lambda e: isinstance(e, Frame) and e.opcode in (Opcode.TEXT, Opcode.CLOSE), timeout
        )
        if frame is None or frame.opcode == Opcode.CLOSE:
            return None
        data: dict[str, Any] = json.loads(frame.data)
        return data

    def wait_closed(self, timeout: float = 10.0) -> int | None:
        """Reads until the server closes; returns its close code (None: cut off without one)."""
        try:
            while self.receive_text(timeout) is not None:
                pass
        except ConnectionError:
            pass
        return self.close_code

    def close(self) -> None:
        self.sock.close()
