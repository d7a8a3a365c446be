"""A loopback HTTP server that counts every request: a test proves nothing was fetched by it."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Tripwire:
    """Serves a small CSV (`password,hunter2`) at any path and counts requests in `hits`."""

    BODY = b"password\nhunter2\n"

    def __init__(self) -> None:
        self.hits = 0
        wire = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                wire.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(wire.BODY)))
                self.end_headers()
                self.wfile.write(wire.BODY)

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/secret.csv"

    @classmethod
    @contextmanager
    def running(cls) -> Iterator[Tripwire]:
        wire = cls()
        thread = threading.Thread(target=wire._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield wire
        finally:
            wire._server.shutdown()
            wire._server.server_close()
