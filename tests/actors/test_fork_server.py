"""Forked workers: the raylet's worker start asks a fork server, and falls back to Ray's own.

Two layers, both real: the worker start script and the fork server as processes on their own
(no Ray: a stand-in worker script that reports who forked it), and the test session's embedded
Ray, whose actors come from its fork server once one runs.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from actors import fork_server, fork_worker
from actors.session_ray import start_unbound_actor
from chatdf.settings import Settings
from tests.live import wait_until

REPORTER = """
import json, os, sys
print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv,
                  "cwd": os.getcwd(), "ray_loaded": "ray" in sys.modules}), flush=True)
"""


def is_template(pid: int) -> bool:
    """Whether `pid` is a fork server's template (what forks the workers)."""
    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return len(cmd) > 2 and cmd[1] == fork_server.__file__ and cmd[2] == "--template"


def start_worker(env: dict[str, str], cwd: Path, *args: str) -> dict[str, Any]:
    """Runs the worker start script as the raylet would; the stand-in worker's report."""
    done = subprocess.run(
        [sys.executable, fork_worker.__file__, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A fork server as the edge starts it, on a socket in a private directory."""
    directory = tmp_path / "forks"
    directory.mkdir(mode=0o700)
    path = directory / "fork.sock"
    proc = subprocess.Popen([sys.executable, fork_server.__file__, str(path)])
    assert wait_until(lambda: path.exists() or proc.poll() is not None)
    yield proc, path
    proc.terminate()
    proc.wait(timeout=30)


def test_a_worker_starts_plain_until_its_template_is_ready_then_forked(
    tmp_path: Path, server: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, path = server
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    worker = tmp_path / "worker.py"
    worker.write_text(REPORTER)
    env = {
        **os.environ,
        fork_worker.RAY_WORKER: str(worker),
        fork_worker.FORK_SOCKET: str(path),
        fork_server.PRELOAD: "json",
    }
    first = start_worker(env, tmp_path, "--x=1")
    assert not is_template(first["ppid"])  # no template yet: Ray's own start, this process
    assert first["argv"] == [str(worker), "--x=1"]

    other = tmp_path / "elsewhere"
    other.mkdir()
    reports: list[dict[str, Any]] = []

    def forked() -> bool:
        reports.append(start_worker(env, other, "--y=2"))
        return is_template(reports[-1]["ppid"])

    assert wait_until(forked)  # plain starts until the template has imported
    report = reports[-1]
    template = psutil.Process(report["ppid"])
    assert template.ppid() == proc.pid  # in the server's (the edge's) process tree
    assert report["ray_loaded"] is True  # imported once, in the template, before the fork
    assert report["argv"] == [str(worker), "--y=2"]
    assert report["cwd"] == str(other)
    assert report["pid"] != template.pid

    # Another environment (another job's workers) is not this template's: plain at first.
    apart = start_worker({**env, "RAY_JOB_ID": "02000000"}, tmp_path)
    assert not is_template(apart["ppid"])
    templates = [c.pid for c in psutil.Process(proc.pid).children() if is_template(c.pid)]
    assert len(templates) == 2  # this env's, and the other job's now starting
    # Ray's prestarted workers (no job yet) get none: the node starts those only once.
    for _ in range(2):
        prestarted = start_worker({**env, "RAY_JOB_ID": "ffffffff"}, tmp_path)
        assert not is_template(prestarted["ppid"])
    assert [c.pid for c in psutil.Process(proc.pid).children() if is_template(c.pid)] == templates

    proc.terminate()
    proc.wait(timeout=30)
    assert wait_until(lambda: not template.is_running())  # the templates end with it
    assert not path.exists()
    after = start_worker(env, tmp_path)  # and a worker still starts, as Ray starts it
    assert not is_template(after["ppid"])


def test_without_a_fork_server_a_worker_starts_as_ray_starts_it(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(REPORTER)
    env = {**os.environ, fork_worker.RAY_WORKER: str(worker)}
    env.pop(fork_worker.FORK_SOCKET, None)
    report = start_worker(env, tmp_path, "--z=3")
    assert report["argv"] == [str(worker), "--z=3"]
    assert report["ray_loaded"] is False


@ray.remote(num_cpus=0)
class Probe:
    def where(self) -> tuple[int, int]:
        return os.getpid(), os.getppid()

    def sigint_handler(self) -> str:
        import signal

        return getattr(signal.getsignal(signal.SIGINT), "__name__", "")

    def polars_version(self) -> str:
        import polars

        return str(polars.__version__)


def forked_probe() -> Any:
    """A probe actor that a fork server forked (the first starts may come before it runs)."""
    found: list[Any] = []

    def attempt() -> bool:
        probe = Probe.remote()  # type: ignore[attr-defined]
        _pid, ppid = ray.get(probe.where.remote(), timeout=60)
        if is_template(ppid):
            found.append(probe)
            return True
        ray.kill(probe)
        return False

    assert wait_until(attempt, limit_s=120)
    return found[0]


def test_the_embedded_rays_actors_are_forked_and_work(ray_session: None) -> None:
    probe = forked_probe()
    # Ray cancels a task with SIGINT: a forked worker takes it as Python does (the server
    # itself ignores it).
    assert ray.get(probe.sigint_handler.remote(), timeout=60) == "default_int_handler"
    # The server kept Polars out while importing; the child is not under that rule.
    assert ray.get(probe.polars_version.remote(), timeout=60)
    ray.kill(probe)


def test_a_forked_session_actor_keeps_out_what_it_never_uses(
    ray_session: None, settings: Settings
) -> None:
    forked_probe()  # this job's fork server runs
    _name, handle = start_unbound_actor(settings)
    try:
        health = ray.get(handle.check_health.remote(), timeout=60)
        assert health["kept_out_loaded"] == []
        assert health["polars_loaded"] is False
        # Which process it is: the session actor's own pid is the fork server's child.
        pid = ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=60)
        assert is_template(psutil.Process(pid).ppid())
    finally:
        ray.kill(handle)
