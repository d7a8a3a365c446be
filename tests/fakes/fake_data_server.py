"""A loopback HTTP server serving dataset files the way real ones misbehave; it counts bytes."""

from __future__ import annotations

import re
import socket
import ssl
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

CHUNK = 64 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hang up mid-body on purpose (a prefix read, a timeout); that is not a failure.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _QuietTlsServer(_QuietServer):
    """The same server over TLS; handshakes run in the handler threads, not the accept loop."""

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext
    ) -> None:
        self.tls = tls
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, object]:
        sock, address = self.socket.accept()
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: object, client_address: object) -> None:
        try:
            request.do_handshake()  # type: ignore[attr-defined]
        except OSError:
            return  # the client refused our certificate (or hung up): that is its call to make
        super().finish_request(request, client_address)  # type: ignore[arg-type]

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ssl.SSLError):  # a client hanging up mid-record
            super().handle_error(request, client_address)


@dataclass
class FakeFile:
    """One registered path and how it should be served."""

    body: bytes | Path = b""
    ranges: bool = True  # honour Range headers (206) or ignore them (200, whole body)
    status: int = 200  # e.g. 404; the body is then a short text
    redirect_to: str | None = None  # answer 302 with this Location
    stall: bool = False  # accept the request, then say nothing until the server stops
    stall_after: int | None = None  # send headers and this many body bytes, then go quiet
    cut_after: int | None = None  # send this many body bytes of a full Content-Length, then close
    content_type: str = "application/octet-stream"
    no_length: bool = False  # no Content-Length: the body ends when the connection closes

    def size(self) -> int:
        return self.body.stat().st_size if isinstance(self.body, Path) else len(self.body)

    def read(self, start: int, length: int) -> Iterator[bytes]:
        if isinstance(self.body, bytes):
            for offset in range(start, start + length, CHUNK):
                yield self.body[offset : min(offset + CHUNK, start + length)]
            return
        with self.body.open("rb") as source:
            source.seek(start)
            left = length
            while left > 0 and (chunk := source.read(min(CHUNK, left))):
                left -= len(chunk)
                yield chunk


@dataclass
class FakeDataServer:
    """ThreadingHTTPServer on 127.0.0.1 (random port) in a background thread.

    Register files with `add(path, ...)`; read `bytes_served[path]`, `requests[path]` and
    `headers_seen[path]` afterwards. Stalled handlers are released by `stop()`. With `tls` (a
    server-side SSLContext holding a certificate) it serves HTTPS and its URLs say https://.
    """

    host: str = "127.0.0.1"
    files: dict[str, FakeFile] = field(default_factory=dict)
    bytes_served: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    headers_seen: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        handler = _handler_for(self)
        self._httpd: _QuietServer = (
            _QuietServer((self.host, 0), handler)
            if self.tls is None
            else _QuietTlsServer((self.host, 0), handler, self.tls)
        )
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> FakeDataServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str, host: str | None = None) -> str:
        """The URL of a registered path, optionally under another host name for this port."""
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    def add(self, path: str, body: bytes | Path = b"", **options: object) -> str:
        """Register a file (bytes or a file on disk) and return its URL."""
        self.files[path] = FakeFile(body=body, **options)  # type: ignore[arg-type]
        return self.url(path)

    def count(self, path: str, sent: int, headers: dict[str, str]) -> None:
        with self._lock:
            self.bytes_served[path] += sent
            if headers:
                self.requests[path] += 1
                self.headers_seen.setdefault(path, []).append(headers)


def _handler_for(server: FakeDataServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real file servers do

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, *, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            server.count(path, 0, {k.lower(): v for k, v in self.headers.items()})
            spec = server.files.get(path)
            if spec is None:
                return self._plain(404, b"not found")
            if spec.stall:
                server.release.wait(30)
                self.close_connection = True
                return None
            if spec.redirect_to is not None:
                self.send_response(302)
                self.send_header("Location", spec.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if spec.status != 200:
                return self._plain(spec.status, b"no")
            self._send_file(path, spec, body=body)
            return None

        def _plain(self, status: int, text: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def _send_file(self, path: str, spec: FakeFile, *, body: bool) -> None:
            size = spec.size()
            start, length, status = 0, size, 200
            wanted = self.headers.get("Range") if spec.ranges else None
            if wanted:
                parsed = _parse_range(wanted, size)
                if parsed is None:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, length, status = parsed[0], parsed[1], 206
            self.send_response(status)
            self.send_header("Content-Type", spec.content_type)
            if spec.no_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(length))
            if spec.ranges:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
            self.end_headers()
            if body:
                self._write_body(path, spec, start, length)

        def _write_body(self, path: str, spec: FakeFile, start: int, length: int) -> None:
            limit = spec.cut_after if spec.cut_after is not None else spec.stall_after
            sent = 0
            try:
                for chunk in spec.read(start, length):
                    if limit is not None:
                        chunk = chunk[: max(0, limit - sent)]
                    # Counted before the write: once the client has the bytes, the count shows
                    # them (a failed write can only over-count, which errs on the safe side).
                    server.count(path, len(chunk), {})
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if limit is not None and sent >= limit:
                        break
                self.wfile.flush()
                if spec.stall_after is not None:
                    server.release.wait(30)
                if limit is not None:
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, length) for one 'bytes=a-b' / 'a-' / '-n' range; None when unsatisfiable."""
    match = _RANGE.match(header.strip())
    if match is None or size == 0:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        start = max(0, size - int(last))
        return start, size - start
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end - start + 1


@pytest.fixture
def data_server() -> Iterator[FakeDataServer]:
    """A started FakeDataServer, stopped (and its stalled handlers released) after the test."""
    server = FakeDataServer().start()
    yield server
    server.stop()
