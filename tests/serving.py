"""`chatdf serve` in a subprocess, started as a user starts it, for the tests that need the real
command (embedded Ray, uvicorn, signals, logs)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil  # Ray's bundled copy, on sys.path once conftest.py has imported ray

from tests.live import free_port, wait_until

CHATDF = Path(sys.executable).parent / "chatdf"
NOT_INHERITED = ("RAY_ADDRESS", "DATABASE_URL", "RAY_AUTH_")  # the test's own, not the server's


@dataclass
class ServeProcess:
    url: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]


def _healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, log.read_text()
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def chatdf_serve(
    tmp: Path, *, drop: tuple[str, ...] = (), port: int | None = None, **env: str
) -> Iterator[ServeProcess]:
    """Runs `chatdf serve` on a free loopback port with a fresh DATA_DIR under `tmp` and an
    embedded Ray of 2 CPUs; `env` adds settings, `drop` removes inherited variables by prefix.
    Yields once /health answers 200; stops it (SIGTERM, then SIGKILL) at the end."""
    port = port or free_port()
    log = tmp / "serve.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED + drop)}
    environ.update(DATA_DIR=str(tmp / "data"), RAY_NUM_CPUS="2", LOG_LEVEL="INFO")
    environ.update(env)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(CHATDF), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
            cwd=tmp,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _healthy(url, proc, log), limit_s=120), log.read_text()
        yield ServeProcess(url, port, log, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def dataset_ready(url: str, auth: dict[str, str], conv: str) -> bool:
    """Whether the conversation's first dataset has loaded."""
    datasets = httpx.get(f"{url}/conversations/{conv}", headers=auth).json()["datasets"]
    return bool(datasets) and datasets[0]["status"] == "ready"


def query_process_running(root: int) -> bool:
    """Whether a confined query process (actors/sql_child.py) runs under the process `root`."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(root).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.name() == "chatdf-query":
                    return True
    return False
