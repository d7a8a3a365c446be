"""The `chatdf serve` command as a newcomer runs it: its own embedded Ray, SQLite, sample data;
that Ray listens on loopback only and refuses clients without its token."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil  # Ray's bundled copy, on sys.path once conftest.py has imported ray
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from api.shutdown import SHUTTING_DOWN
from tests.live import wait_until
from tests.serving import chatdf_serve, dataset_ready, query_process_running


@dataclass
class Served:
    url: str
    log: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`chatdf serve` in a subprocess with a fresh data dir and no Ray token of its own."""
    with chatdf_serve(tmp_path, HEARTBEAT_INTERVAL="0.5", RAY_NAMESPACE="chatdf-serve-test") as s:
        yield Served(s.url, s.log, s.proc)


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


def ray_processes(served: Served) -> list[psutil.Process]:
    """The embedded Ray's processes (GCS, raylet, agents, workers) once the edge has used them:
    a socket (the user's session actor) and a dataset load (a task worker)."""
    url = served.url
    token = httpx.post(f"{url}/auth/dev-login", json={}).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    conv = httpx.post(f"{url}/conversations", headers=auth).json()["id"]
    with connect(f"ws://127.0.0.1:{url.rsplit(':', 1)[1]}/ws?token={token}") as ws:
        r = httpx.post(
            f"{url}/conversations/{conv}/datasets",
            headers=auth,
            json={"url": f"{url}/samples/sales.parquet"},
            timeout=60,
        )
        assert r.status_code == 201, r.text
        while json.loads(ws.recv(timeout=60))["type"] != "dataset_loaded":
            pass
    procs: list[psutil.Process] = psutil.Process(served.proc.pid).children(recursive=True)
    names = [" ".join(p.cmdline()) for p in procs]
    for part in ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent", "SessionActor"):
        assert any(part in name for name in names), (part, names)
    return procs


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback


@pytest.mark.slow
def test_embedded_ray_listens_on_loopback_only(served: Served) -> None:
    """`--host 127.0.0.1` must not put Ray's GCS, raylet, object manager, agents, metrics
    exporters or worker servers on another interface (0.0.0.0, ::, or the machine's IP)."""
    exposed = []
    for proc in ray_processes(served):
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in proc.net_connections(kind="inet"):
                bound = conn.status == psutil.CONN_LISTEN or conn.type == socket.SOCK_DGRAM
                if bound and not is_loopback(conn.laddr.ip):
                    exposed.append((proc.name(), conn.laddr.ip, conn.laddr.port))
    assert exposed == []


GCS_KEYS = """
import sys
from ray._raylet import GcsClient
print(len(GcsClient(address=sys.argv[1]).internal_kv_keys(b"", None)))
"""


@pytest.mark.slow
def test_embedded_ray_refuses_clients_without_its_token(served: Served, tmp_path: Path) -> None:
    """A client with no token, or another token, cannot read the GCS key-value store (which
    would mean running code in the cluster); the edge's own token can. It is never logged."""
    procs = ray_processes(served)
    gcs = next(p for p in procs if p.name() == "gcs_server")
    port = next(c.laddr.port for c in gcs.net_connections("tcp") if c.status == psutil.CONN_LISTEN)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    clean["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on

    def read_kv(**auth: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", GCS_KEYS, f"127.0.0.1:{port}"],
            env=dict(clean, **auth),
            capture_output=True,
            text=True,
            timeout=120,
        )

    for auth in ({}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
        refused = read_kv(**auth)
        assert refused.returncode != 0, (auth, refused.stdout)
        assert "AuthenticationError" in refused.stderr, refused.stderr[-2000:]
    ray_env = gcs.environ()  # the Ray processes get the token file's path, not the token
    token_path = ray_env["RAY_AUTH_TOKEN_PATH"]
    token = Path(token_path).read_text()
    assert "RAY_AUTH_TOKEN" not in ray_env and ray_env["RAY_AUTH_MODE"] == "token"
    allowed = read_kv(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path)
    assert allowed.returncode == 0 and int(allowed.stdout) > 0, allowed.stderr[-2000:]
    assert len(token) == 64 and token not in served.log.read_text()


@pytest.mark.slow
def test_sigterm_does_not_wait_for_a_request_past_the_shutdown_timeout(tmp_path: Path) -> None:
    """A request still running at SIGTERM (here a query of billions of rows, which its own
    60 s limit would end) is cut off after SHUTDOWN_TIMEOUT_S, so a service manager's stop
    never hangs on it (uvicorn alone waits for every request), and it answers 503 in the
    contract's error body rather than uvicorn's 500."""
    with chatdf_serve(
        tmp_path,
        SHUTDOWN_TIMEOUT_S="2",
        RAY_NAMESPACE="chatdf-serve-test",
        WARM_SESSION_ACTORS="0",
        WARM_TASK_WORKERS="0",
    ) as served:
        url, proc = served.url, served.proc
        token = httpx.post(f"{url}/auth/dev-login", json={}).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        conv = httpx.post(f"{url}/conversations", headers=auth).json()["id"]
        sample = {"url": f"{url}/samples/sales.parquet"}
        added = httpx.post(
            f"{url}/conversations/{conv}/datasets", headers=auth, json=sample, timeout=60
        )
        assert added.status_code == 201, added.text
        assert wait_until(lambda: dataset_ready(url, auth, conv))
        slow = (  # 288^5 ≈ 2e12 rows
            "SELECT sum(a.revenue * b.revenue + c.revenue - d.revenue + e.revenue) AS s"
            " FROM table1 a, table1 b, table1 c, table1 d, table1 e"
        )
        answers: list[httpx.Response] = []

        def ask() -> None:
            with contextlib.suppress(httpx.HTTPError):
                answers.append(
                    httpx.post(
                        f"{url}/conversations/{conv}/query",
                        headers=auth,
                        json={"sql": slow},
                        timeout=120,
                    )
                )

        asking = threading.Thread(target=ask)
        asking.start()
        assert wait_until(lambda: query_process_running(proc.pid)), served.log.read_text()
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=45) in (0, -signal.SIGTERM)
        assert time.monotonic() - sent < 40  # the query alone would have taken its 60 s
        asking.join(timeout=30)
        assert [(r.status_code, r.json()) for r in answers] == [
            (503, {"error": SHUTTING_DOWN, "details": None})
        ]
        assert "Traceback" not in served.log.read_text()


def _session_dir(procs: list[psutil.Process]) -> str:
    for proc in procs:
        for arg in proc.cmdline():
            if arg.startswith("--session-dir="):
                return str(arg.split("=", 1)[1])
    raise AssertionError("no Ray process names its session directory")


def _still_running(procs: list[psutil.Process], session_dir: str) -> list[str]:
    """The recorded processes still alive (zombies are dead), and any other naming the session."""
    left = {p.pid: p for p in procs}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if session_dir in " ".join(proc.cmdline()):
                left.setdefault(proc.pid, proc)
    names = []
    for proc in left.values():
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                names.append(" ".join(proc.cmdline())[:120])
    return names


@pytest.mark.slow
def test_an_embedded_ray_dies_with_its_edge_after_kill_9(served: Served) -> None:
    """kill -9 of `chatdf serve` leaves no process of its Ray behind: GCS, raylet and workers
    follow the driver by themselves; the agents, which Ray does not end, are ended by the
    edge's watchdog (api/ray_watchdog.py), which then exits too."""
    procs = ray_processes(served)  # every part of the Ray, the session actor included
    session_dir = _session_dir(procs)
    served.proc.kill()
    served.proc.wait(timeout=30)
    assert wait_until(lambda: not _still_running(procs, session_dir), limit_s=30), _still_running(
        procs, session_dir
    )
