"""What the raylet runs for a new Python worker when workers are forked (`WORKER_FORK_SERVER`).

The embedded Ray's raylet starts this script in place of Ray's `default_worker.py` (its worker
path; `api/embedded_ray.py`). It asks the edge's fork server (`actors/fork_server.py`) for a
worker forked from a process that has Ray and the session actor's modules imported already,
and then stands in for it: it forwards SIGTERM and SIGINT and exits when the worker does. The
forked worker registers with the raylet under its own pid, and the raylet signals that pid
from then on (docs/architecture.md, "Forked workers").

Whenever the server has no such process ready for this worker's environment (the first start
of a job, or the server gone), this runs Ray's own worker instead: an `exec`, same pid, same
arguments, so a worker always starts.

Plain standard library, run by path (no chatdf import): it is on every worker's start path.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys

RAY_WORKER = "CHATDF_RAY_WORKER"  # Ray's default_worker.py
FORK_SOCKET = "CHATDF_FORK_SOCKET"  # the edge's fork server
REPLY_TIMEOUT_S = 10.0  # a fork answers in milliseconds; a server stuck longer is skipped


def run_plain(real: str) -> None:
    """Ray's own worker, in this process."""
    os.execv(sys.executable, [sys.executable, real, *sys.argv[1:]])


def ask_for_fork(path: str, real: str) -> int:
    """The pid of a worker forked for these arguments, or 0 if none was."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(REPLY_TIMEOUT_S)
            sock.connect(path)
            request = {"argv": [real, *sys.argv[1:]], "cwd": os.getcwd(), "env": dict(os.environ)}
            body = json.dumps(request).encode()
            socket.send_fds(sock, [len(body).to_bytes(8, "big") + body], [0, 1, 2])
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(64)
                if not chunk:
                    return 0
                reply += chunk
            return int(reply)
    except (OSError, ValueError):
        return 0


def stand_in_for(pid: int) -> None:
    """Until the worker exits: signals meant for it reach it."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda n, _frame: os.kill(pid, n))
    while True:
        try:
            select.select([fd], [], [])
            return
        except InterruptedError:
            continue


def main() -> None:
    real = os.environ[RAY_WORKER]
    path = os.environ.get(FORK_SOCKET, "")
    pid = ask_for_fork(path, real) if path else 0
    if pid <= 0:
        run_plain(real)
    stand_in_for(pid)


if __name__ == "__main__":
    main()
