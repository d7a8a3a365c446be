"""The loopback HTTP server behind the scripted model fakes (Gemini, chat-completions): a queue
of replies under a lock, a server thread, and a close that releases replies held open."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Protocol, Self, TypeVar

GATE_POLL_S = 0.05  # how often a held stream checks whether the fake is closing


class Releasable(Protocol):
    def release(self) -> None: ...


R = TypeVar("R", bound=Releasable)


class ScriptedServer(Generic[R]):
    """Binds 127.0.0.1 on a free port (other processes, Ray workers, reach it at `port`);
    subclasses queue replies in `_replies` and answer with the handler `make_handler` builds."""

    def __init__(self, make_handler: Callable[[Any], type[BaseHTTPRequestHandler]]) -> None:
        self._lock = threading.Lock()
        self._replies: deque[R] = deque()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": GATE_POLL_S}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            for reply in self._replies:
                reply.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pending(self) -> int:
        with self._lock:
            return len(self._replies)

    def _wait(self, gate: threading.Event) -> None:
        """Holds a reply until its gate opens, or the fake closes."""
        while not gate.wait(GATE_POLL_S):
            if self._closing.is_set():
                return
