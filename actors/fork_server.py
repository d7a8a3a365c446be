"""The edge's fork server for its embedded Ray's workers: imports once, forks each worker.

Two roles, one file, run by path:

- `fork_server.py SOCKET`: the server. The edge starts it before Ray (`api/embedded_ray.py`),
  so it and all it starts stay in the edge's process tree. Plain standard library. Each
  request on its socket (mode 0600 in the edge's private directory, peers of the same uid
  only) comes from a worker start (`actors/fork_worker.py`) with that worker's arguments,
  working directory, standard streams and environment. It hands the request to the template
  of that exact environment, which forks the worker, and answers its pid; with no template
  ready for that environment it answers 0 (the worker starts as Ray starts it) and starts one
  (none for Ray's prestarted, job-less workers: there are no more of those later).
- `fork_server.py --template FD`: a template, started by the server with the environment it
  serves (Ray reads parts of its configuration from the environment once, at import, so a
  template serves only workers whose environment is exactly its own: one per job). It imports
  Ray and `CHATDF_FORK_PRELOAD` (what a session actor imports; never what
  `actors/keep_out.py` keeps out), builds a preloaded module's lazily built types
  (`warm_types`), freezes those objects out of the garbage collector (so the children's
  collections do not write to the pages they share with it), says it is ready, and then forks
  one child per request. The child takes its own session and process group (Ray ends a
  worker's group when the worker exits), the request's streams, directory and arguments, and
  runs Ray's `default_worker.py`: an ordinary Ray worker from then on. Task workers import
  Polars themselves, as before; a session actor's process installs its keep-out rule when Ray
  loads its class (`actors/session_process.py`), as before.

The server exits with the edge (it watches its parent) or on SIGTERM; a template exits with
the server, or after `FORK_SERVER_IDLE_S` (600) without a request (the next start of its
environment starts a new one).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from typing import Any

PRELOAD = "CHATDF_FORK_PRELOAD"  # space-separated module names
IDLE_S = float(os.environ.get("FORK_SERVER_IDLE_S", "600"))
FORK_TIMEOUT_S = 10.0
MAX_REQUEST = 4 << 20
READY = b"ready\n"
# What every Ray worker imports at start or at its first call (py-spy of forked session
# actors: Ray's serializer set-up imports pydantic.v1 and Starlette for their types).
RAY_MODULES = (
    "ray",
    "ray.actor",
    "ray.util.serialization_addons",
    "ray._common.pydantic_compat",
    "ray._common.usage.usage_lib",
    "pydantic.v1",
    "starlette.datastructures",
)
MAX_TEMPLATES = 8  # environments at once: a job's, the job-less workers', a few more edges'


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} fork server {os.getpid()}: {message}", file=sys.stderr, flush=True)


def environment_key(environ: dict[str, str]) -> str:
    return json.dumps(sorted(environ.items()))


# Framing: an 8-byte length, a JSON body, and the file descriptors with its first bytes -------


def send_message(sock: socket.socket, body: dict[str, Any], fds: list[int]) -> None:
    data = json.dumps(body).encode()
    socket.send_fds(sock, [len(data).to_bytes(8, "big") + data], fds)


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """A message and its descriptors; None at end of stream."""
    first, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, 3)
    if not first:
        return None
    try:
        while len(first) < 8:
            chunk = sock.recv(8 - len(first))
            if not chunk:
                raise ValueError("truncated message")
            first += chunk
        size = int.from_bytes(first[:8], "big")
        if size > MAX_REQUEST:
            raise ValueError("message too large")
        body = first[8:]
        while len(body) < size:
            chunk = sock.recv(size - len(body))
            if not chunk:
                raise ValueError("truncated message")
            body += chunk
        return json.loads(body), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def recv_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise EOFError("closed")
        line += chunk
    return line


# The server -----------------------------------------------------------------------------


class Template:
    """A template process of one environment, as the server sees it."""

    def __init__(self, env: dict[str, str]) -> None:
        mine, theirs = socket.socketpair()
        self.sock = mine
        self.ready = False
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--template", str(theirs.fileno())],
            env=env,
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the edge's terminal is the edge's
        )
        theirs.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, request: dict[str, Any], fds: list[int]) -> int:
        self.sock.settimeout(FORK_TIMEOUT_S)
        send_message(self.sock, {"argv": request["argv"], "cwd": request["cwd"]}, fds)
        return int(recv_line(self.sock))

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def jobless(env: dict[str, str]) -> bool:
    """Ray's prestarted workers, started with its node before any job: a template for them
    (≈ 1.6 CPU-s at the edge's start) would fork none later."""
    job = env.get("RAY_JOB_ID", "")
    return bool(job) and set(job) == {"f"}


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def listen(path: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging)
    server.bind(staging)
    os.chmod(staging, 0o600)
    server.listen(256)
    os.rename(staging, path)  # appears only once it accepts
    return server


def answer(conn: socket.socket, templates: dict[str, Template]) -> None:
    """One worker start: its pid if a ready template forked it, else 0."""
    conn.settimeout(5)
    if peer_uid(conn) != os.getuid():
        return
    message = recv_message(conn)
    if message is None:
        return
    request, fds = message
    pid = 0
    try:
        env = {str(k): str(v) for k, v in request["env"].items()}
        key = environment_key(env)
        template = templates.get(key)
        if template is not None and not template.alive():
            templates.pop(key).close()
            template = None
        if template is None and len(templates) < MAX_TEMPLATES and not jobless(env):
            templates[key] = Template(env)  # for the next start of this environment
            log(f"template {templates[key].proc.pid} starting for a new environment")
        elif template is not None and template.ready:
            try:
                pid = template.fork(request, fds)
            except (OSError, ValueError, EOFError) as exc:
                log(f"template {template.proc.pid} failed ({exc!r}); dropped")
                templates.pop(key).close()
    finally:
        for fd in fds:
            os.close(fd)
    conn.sendall(f"{pid}\n".encode())


def serve(path: str) -> None:
    parent = os.pidfd_open(os.getppid())  # the edge
    server = listen(path)
    templates: dict[str, Template] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # A Ctrl-C to the edge's terminal reaches its whole group: the edge shuts down gracefully,
    # and this ends with it (its parent's pidfd), not before.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while True:
            starting = {t.sock.fileno(): t for t in templates.values() if not t.ready}
            try:
                ready, _, _ = select.select([server.fileno(), parent, *starting], [], [], 30)
            except InterruptedError:
                continue
            if parent in ready:
                return
            for fd in ready:
                template = starting.get(fd)
                if template is None:
                    continue
                try:
                    template.ready = recv_line(template.sock) == READY
                except (OSError, EOFError):
                    template.ready = False
                if not template.ready:
                    key = next(k for k, t in templates.items() if t is template)
                    templates.pop(key).close()
            for key in [k for k, t in templates.items() if not t.alive()]:
                templates.pop(key).close()  # idle ones exit on their own
            if server.fileno() in ready:
                with contextlib.suppress(InterruptedError):
                    conn, _ = server.accept()
                    with conn:
                        try:
                            answer(conn, templates)
                        except (OSError, ValueError, KeyError, TypeError) as exc:
                            log(f"bad request: {exc!r}")
    finally:
        for template in templates.values():
            template.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# A template -----------------------------------------------------------------------------


def preload() -> None:
    # What a worker run by path sees first on its path: the worker script's directory.
    sys.path[0] = os.path.dirname(os.environ["CHATDF_RAY_WORKER"])
    from actors.keep_out import keeping_out

    with keeping_out():
        for name in [*RAY_MODULES, *os.environ.get(PRELOAD, "").split()]:
            try:
                module = importlib.import_module(name)
                warm = getattr(module, "warm_types", None)  # the model SDK's lazily built types
                if callable(warm):
                    warm()
            except Exception as exc:  # a worker imports it itself later; say so here
                log(f"could not preload {name}: {exc!r}")
    gc.collect()
    gc.freeze()


def run_child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: becomes the worker the raylet asked for. Never returns."""
    code = 1
    try:
        # Its own session and process group, as Ray gives a worker: Ray ends a worker's group
        # when it exits, which must not take the template and its other workers along.
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        sys.argv = [str(a) for a in request["argv"]]
        import runpy

        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def reap(_signum: int = 0, _frame: Any = None) -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def template(fd: int) -> None:
    # The server ignores SIGINT and that is inherited: a worker must get it (Ray cancels a
    # task with it), so the template and its children take Python's own handler again.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sock = socket.socket(fileno=fd)
    started = time.process_time()
    preload()
    signal.signal(signal.SIGCHLD, reap)
    sock.sendall(READY)
    log(f"template ready (preloaded in {time.process_time() - started:.2f} CPU-s)")
    while True:
        try:
            readable, _, _ = select.select([sock], [], [], IDLE_S)
        except InterruptedError:
            continue
        if not readable:
            log(f"no start for {IDLE_S:.0f} s: exiting")
            return
        try:
            message = recv_message(sock)
        except InterruptedError:
            continue
        if message is None:
            return  # the server is gone
        request, fds = message
        pid = os.fork()
        if pid == 0:
            sock.close()
            run_child(request, fds)
        for child_fd in fds:
            os.close(child_fd)
        sock.sendall(f"{pid}\n".encode())


def main() -> None:
    if sys.argv[1] == "--template":
        template(int(sys.argv[2]))
    else:
        serve(sys.argv[1])


if __name__ == "__main__":
    main()
