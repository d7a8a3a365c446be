"""A loopback TCP proxy a test can cut: the client's REST calls and sockets pass through it."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forwards each connection to 127.0.0.1:`target_port`. `cut()` drops the open ones (as a
    lost network would); while `refusing` is set, new connections are closed at once.
    What passed each way since the last cut is kept, to see a client's re-read answered."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refusing = threading.Event()
        self.accepted = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._since_cut = {True: bytearray(), False: bytearray()}  # keyed by "from the client"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self.refusing.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.accepted += 1
                self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self._since_cut[from_client] += data
                dst.sendall(data)
        except OSError:
            pass  # cut
        finally:
            _close(src)
            _close(dst)

    def passed_since_cut(self, needle: bytes, *, from_client: bool) -> bool:
        with self._lock:
            return needle in self._since_cut[from_client]

    def cut(self) -> None:
        with self._lock:
            conns, self._open = self._open, []
            for passed in self._since_cut.values():
                passed.clear()
        for conn in conns:
            _close(conn)

    def close(self) -> None:
        self._listener.close()
        self.cut()


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()
