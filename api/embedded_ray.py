"""The embedded single-node Ray that `chatdf serve` starts: bound to loopback, token auth on.

Ray 2.60 has no bind-address option. Its GCS, raylet (node manager and object manager) and
worker gRPC servers listen on 127.0.0.1 only when the node's IP is literally "127.0.0.1", and
otherwise on every interface; the agents and metrics exporters follow the node IP. `ray.init`
turns a requested `_node_ip_address="127.0.0.1"` into the machine's routable address unless Ray
believes it runs as a single machine (its `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` mode, the default
on macOS and Windows). We switch that mode on around `ray.init`, then check the node IP Ray chose.

Token authentication: a new local Ray of 2.60 turns `RAY_AUTH_MODE=token` on by itself when the
variable is unset (and refreshes Ray's cached configuration, which a variable set after `import
ray` would not). We therefore unset it; an operator's `RAY_AUTH_MODE=disabled` is overridden.
The token is the operator's (`RAY_AUTH_TOKEN` or `RAY_AUTH_TOKEN_PATH`), else a random one per
start, written to a private file that every Ray process reads through `RAY_AUTH_TOKEN_PATH`
(so the secret itself is in no process environment and in no log) and removed by `stop()`.

Forked workers (`fork_workers`): the raylet's worker path is `actors/fork_worker.py` instead of
Ray's `default_worker.py`, so a new worker is forked from a process that has Ray and the session
actor's modules imported (`actors/fork_server.py`; docs/architecture.md, "Forked workers").
Ray 2.60 has no option for it: `ray.init` builds its node parameters without a worker path and
fills in its own only where none is set, so the parameters are given ours around the call.

Fate: the embedded Ray dies with its edge, even after `kill -9` of the edge. A watchdog
(`api/ray_watchdog.py`, its own process session, an empty environment) waits on the edge's pid
and then ends every process of the Ray session (docs/architecture.md, "An embedded Ray dies
with its edge").
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

AUTH_MODE = "RAY_AUTH_MODE"
AUTH_TOKEN = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"

FORK_DIR_PREFIX = "chatdf-fork-"

_generated_token_dir: Path | None = None
_fork_dir: Path | None = None
_fork_server: subprocess.Popen[bytes] | None = None
FORK_SERVER_START_S = 5.0
_watchdog: subprocess.Popen[bytes] | None = None
WATCHDOG = Path(__file__).with_name("ray_watchdog.py")


def start(*, fork_workers: bool = True, fork_preload: str = "", **init_kwargs: Any) -> None:
    """`ray.init` of a new local Ray that listens on loopback only and requires the token.

    `fork_workers`: its Python workers are forked from a fork server that has imported Ray and
    `fork_preload` (space-separated modules)."""
    import ray

    _require_token_auth()
    with _single_machine(), _forked_workers(fork_workers, fork_preload):
        ray.init(_node_ip_address=LOOPBACK, **init_kwargs)
    try:
        _check_started()
    except BaseException:
        stop()
        raise
    _start_watchdog()


def _start_watchdog() -> None:
    """The process that ends this Ray's processes once this one (the edge) exits."""
    from ray._private import worker

    global _watchdog
    node = worker._global_node
    if node is None or (_watchdog is not None and _watchdog.poll() is None):
        return
    _watchdog = subprocess.Popen(
        [sys.executable, str(WATCHDOG), str(os.getpid()), node.get_session_dir_path()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={},  # nothing secret to hand on: it only reads /proc and sends signals
        start_new_session=True,  # a Ctrl-C or SIGTERM to the edge's group does not reach it
    )


def watchdog_pid() -> int | None:
    return _watchdog.pid if _watchdog is not None else None


def stop() -> None:
    """Shuts the embedded Ray down and removes the token file generated for it, if any."""
    import ray

    global _generated_token_dir
    ray.shutdown()
    if _generated_token_dir is not None:
        if os.environ.get(AUTH_TOKEN_PATH, "").startswith(str(_generated_token_dir)):
            del os.environ[AUTH_TOKEN_PATH]
        shutil.rmtree(_generated_token_dir, ignore_errors=True)
        _generated_token_dir = None
    _stop_fork_server()


@contextmanager
def _forked_workers(enabled: bool, preload: str) -> Iterator[None]:
    """Within: a `ray.init` that starts a node gives its raylet our worker path, and the fork
    server runs (a child of this process, so it and every worker it forks stay in the edge's
    process tree). The variables reach the raylet's workers: they inherit its environment,
    which is ours."""
    if not enabled:
        yield
        return
    import ray
    from ray._private import parameter

    from actors import fork_server, fork_worker

    _start_fork_server()
    os.environ[fork_worker.RAY_WORKER] = str(
        Path(ray.__file__).parent / "_private" / "workers" / "default_worker.py"
    )
    os.environ[fork_server.PRELOAD] = preload
    original = parameter.RayParams.__init__

    def with_worker_path(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.worker_path is None:
            self.worker_path = fork_worker.__file__

    parameter.RayParams.__init__ = with_worker_path  # type: ignore[method-assign]
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original  # type: ignore[method-assign]


def _start_fork_server() -> None:
    from actors import fork_server, fork_worker

    global _fork_dir, _fork_server
    if _fork_server is not None and _fork_server.poll() is None:
        return
    _fork_dir = Path(tempfile.mkdtemp(prefix=FORK_DIR_PREFIX))  # mode 0700
    path = _fork_dir / "fork.sock"
    log_file = open(_fork_dir / "fork_server.log", "ab")  # noqa: SIM115  # the server's own
    _fork_server = subprocess.Popen(
        [sys.executable, fork_server.__file__, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=log_file,
    )
    log_file.close()
    deadline = time.monotonic() + FORK_SERVER_START_S
    while not path.exists() and _fork_server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # a standard-library process: ready in tens of milliseconds
    if path.exists():
        os.environ[fork_worker.FORK_SOCKET] = str(path)
    else:
        log.warning("the fork server did not start: Ray starts each worker itself")


def _stop_fork_server() -> None:
    from actors import fork_worker

    global _fork_dir, _fork_server
    if _fork_server is not None:
        _fork_server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            _fork_server.wait(timeout=10)
        _fork_server = None
    os.environ.pop(fork_worker.FORK_SOCKET, None)
    if _fork_dir is not None:
        shutil.rmtree(_fork_dir, ignore_errors=True)
        _fork_dir = None


def _require_token_auth() -> None:
    global _generated_token_dir
    mode = os.environ.pop(AUTH_MODE, None)
    if mode is not None and mode.strip().lower() != "token":
        log.warning("%s=%s ignored: the embedded Ray always requires its token", AUTH_MODE, mode)
    if os.environ.get(AUTH_TOKEN) or os.environ.get(AUTH_TOKEN_PATH):
        return  # the operator's token
    directory = Path(tempfile.mkdtemp(prefix="chatdf-ray-auth-"))  # mode 0700
    path = directory / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))  # 256 bits, as Ray's own generator
    _generated_token_dir = directory
    os.environ[AUTH_TOKEN_PATH] = str(path)


@contextmanager
def _single_machine() -> Iterator[None]:
    """Ray's single-machine mode, in which the node IP stays loopback. Ray read the variable
    when it was imported, so the module constant is set too; the processes `ray.init` spawns
    read the variable. Both are put back afterwards (the node IP is fixed by then)."""
    from ray._private import ray_constants

    saved_env = os.environ.get(SINGLE_MACHINE)
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE, None)
        else:
            os.environ[SINGLE_MACHINE] = saved_env


def _check_started() -> None:
    """Refuses to run on a Ray that would listen beyond loopback or accept anyone."""
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    node_ip = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0].strip("[]")
    if not ipaddress.ip_address(node_ip).is_loopback:
        raise RuntimeError(f"the embedded Ray took node IP {node_ip}, not loopback")
    if not is_token_auth_enabled():
        raise RuntimeError("the embedded Ray started without token authentication")
