"""The `chatdf serve` command as a newcomer runs it: its own embedded Ray, SQLite, sample data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.live import free_port

CHATDF = Path(sys.executable).parent / "chatdf"


@dataclass
class Served:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`chatdf serve` in a subprocess with a fresh data dir."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "DATABASE_URL"))}
    env.update(
        DATA_DIR=str(tmp_path / "data"),
        HEARTBEAT_INTERVAL="0.5",
        RAY_NUM_CPUS="2",
        RAY_NAMESPACE="chatdf-serve-test",
        LOG_LEVEL="INFO",
    )
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(CHATDF), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield Served(url, log, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_chatdf_serve_end_to_end(served: Served, tmp_path: Path) -> None:
    """Dev login, a conversation, the bundled sample, SQL, a pinging socket; no token in logs."""
    url, log = served.url, served.log
    login = httpx.post(f"{url}/auth/dev-login", json={})
    assert login.status_code == 200
    token = login.json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    conv = httpx.post(f"{url}/conversations", headers=auth).json()["id"]
    with connect(f"ws://127.0.0.1:{url.rsplit(':', 1)[1]}/ws?token={token}") as ws:
        assert json.loads(ws.recv(timeout=10)) == {"type": "ping"}
        r = httpx.post(
            f"{url}/conversations/{conv}/datasets",
            headers=auth,
            json={"url": f"{url}/samples/sales.parquet"},
        )
        assert r.status_code == 201, r.text
        seen = set()
        while "dataset_loaded" not in seen:
            seen.add(json.loads(ws.recv(timeout=30))["type"])
    r = httpx.post(
        f"{url}/conversations/{conv}/query",
        headers=auth,
        json={"sql": "SELECT COUNT(*) AS n FROM table1"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[288]]
    assert (tmp_path / "data" / "chatdf.db").exists()  # SQLite under DATA_DIR
    text = log.read_text()
    assert "/ws?token=[redacted]" in text or "WebSocket /ws" in text
    assert token not in text


@pytest.mark.slow
def test_sigterm_shuts_down_gracefully(served: Served) -> None:
    """What systemd, Kubernetes and `kill` send: open sockets are closed with a going-away code,
    the lifespan shutdown runs, and nothing in the log looks like a crash (Ray's own SIGTERM
    handler would exit at once, mid-shutdown). uvicorn re-raises the signal once it is done, so
    the exit status is "terminated by SIGTERM", which service managers count as a clean stop."""
    token = httpx.post(f"{served.url}/auth/dev-login", json={}).json()["token"]
    with connect(f"ws://127.0.0.1:{served.url.rsplit(':', 1)[1]}/ws?token={token}") as ws:
        assert json.loads(ws.recv(timeout=10)) == {"type": "ping"}
        served.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code in (1001, 1012)
    assert served.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    text = served.log.read_text()
    assert "Traceback" not in text and "SIGTERM received" not in text, text
    assert "Application shutdown complete" in text
