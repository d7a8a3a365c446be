"""The clustered deployment: a two-node Ray cluster, two `chatdf serve` edges joined to it.

Head and worker are real `ray start` processes (on loopback, their own temp dir); the edges are
real `chatdf serve` processes with RAY_ADDRESS set, sharing one database (PostgreSQL when the
test server is available, else one SQLite file). Every node and edge has the same Ray token, as
docs/security.md tells operators to set it. One user's sockets on both edges get the events of
work started through either edge; a client without the token is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.live import free_port, wait_until
from tests.pg import SERVER_URL, fresh_database
from tests.test_serve import GCS_KEYS

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]

BIN = Path(sys.executable).parent


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):  # SIGTERM: `ray start --block` drains and ends its processes
        proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def wait_healthy(url: str, nodes: int, logs: list[Path], timeout_s: float = 150) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            body = httpx.get(f"{url}/health", timeout=2).json()
            if body.get("status") == "ok" and body.get("ray_nodes") == nodes:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    raise AssertionError("\n".join(p.read_text()[-2000:] for p in logs))


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    if not SERVER_URL:
        yield f"sqlite:///{tmp_path / 'shared.db'}"
        return
    with fresh_database("chatdf_cluster") as url:
        yield url


@pytest.fixture
def cluster(tmp_path: Path, database_url: str) -> Iterator[tuple[str, str, str]]:
    """Head + worker Ray nodes and two edges; yields the two edges' URLs and the GCS address."""
    ray_port, port_a, port_b = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.update(RAY_USAGE_STATS_ENABLED="0")
    common = ["--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    common += ["--resources", '{"chatdf_query": 2, "chatdf_load": 4, "chatdf_session": 50}']
    # Ray's unix sockets live under the temp dir and must stay under 107 bytes.
    ray_tmp = Path(tempfile.mkdtemp(prefix="cdf-", dir="/tmp"))
    temp = ["--temp-dir", str(ray_tmp)]
    procs = [
        start(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--port",
                str(ray_port),
                "--num-cpus",
                "1",
                "--include-dashboard=false",
                *temp,
                *common,
            ],
            tmp_path / "head.log",
            env,
        )
    ]
    # The worker needs the head's GCS: wait until it accepts connections, not a fixed time.
    assert wait_until(lambda: _accepts(ray_port), limit_s=60), (tmp_path / "head.log").read_text()
    procs.append(
        start(
            [
                str(BIN / "ray"),
                "start",
                "--address",
                f"127.0.0.1:{ray_port}",
                "--num-cpus",
                "2",
                *temp,
                *common,
            ],
            tmp_path / "worker.log",
            env,
        )
    )
    edge_env = dict(
        env,
        RAY_ADDRESS=f"127.0.0.1:{ray_port}",
        RAY_NAMESPACE=f"cluster-{uuid.uuid4().hex[:6]}",
        DATABASE_URL=database_url,
        DATA_DIR=str(tmp_path / "data"),
        PUBLIC_URL=f"http://127.0.0.1:{port_a}",  # both edges sit behind one address
        HEARTBEAT_INTERVAL="0.5",
    )
    for port, name in ((port_a, "a"), (port_b, "b")):
        procs.append(
            start(
                [str(BIN / "chatdf"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                tmp_path / f"edge-{name}.log",
                edge_env,
            )
        )
    urls = (f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}")
    logs = [tmp_path / n for n in ("head.log", "worker.log", "edge-a.log", "edge-b.log")]
    try:
        for url in urls:
            wait_healthy(url, nodes=2, logs=logs)
        yield (*urls, f"127.0.0.1:{ray_port}")
    finally:
        stop(procs)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def next_of(ws: object, type_: str) -> dict[str, object]:
    while True:
        frame = json.loads(ws.recv(timeout=60))  # type: ignore[attr-defined]
        if frame["type"] == type_:
            return frame  # type: ignore[no-any-return]


def test_two_edges_on_a_two_node_cluster(cluster: tuple[str, str, str], tmp_path: Path) -> None:
    url_a, url_b, gcs = cluster
    token = httpx.post(f"{url_a}/auth/dev-login", json={"email": "c@example.com"}).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    conv = httpx.post(f"{url_b}/conversations", headers=auth).json()["id"]
    ws_url = "ws://" + url_a.split("//")[1] + f"/ws?token={token}"
    ws_url_b = "ws://" + url_b.split("//")[1] + f"/ws?token={token}"
    with connect(ws_url, open_timeout=60) as ws_a, connect(ws_url_b, open_timeout=60) as ws_b:
        r = httpx.post(
            f"{url_b}/conversations/{conv}/datasets",
            headers=auth,
            json={"url": f"{url_a}/samples/sales.parquet"},
            timeout=60,
        )
        assert r.status_code == 201, r.text
        loaded_a = next_of(ws_a, "dataset_loaded")
        loaded_b = next_of(ws_b, "dataset_loaded")
    assert loaded_a == loaded_b
    assert loaded_a["row_count"] == 288
    for url in (url_a, url_b):
        r = httpx.post(
            f"{url}/conversations/{conv}/query",
            headers=auth,
            json={"sql": "SELECT COUNT(DISTINCT region) AS regions FROM table1"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["rows"] == [[4]]
    assert (
        httpx.get(f"{url_a}/usage", headers=auth).json()
        == httpx.get(f"{url_b}/usage", headers=auth).json()
    )
    without_token = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    refused = subprocess.run(
        [sys.executable, "-c", GCS_KEYS, gcs],
        env=dict(without_token, HOME=str(tmp_path)),  # no ~/.ray/auth_token either
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "AuthenticationError" in refused.stderr, refused.stdout
