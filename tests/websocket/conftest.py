"""WebSocket fixtures: a signed-in user with an open socket on the live server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray

from chatdf.settings import Settings
from tests.live import LiveServer, WSHelper, free_port, wait_until

CHATDF = Path(sys.executable).parent / "chatdf"


@dataclass
class SignedIn:
    token: str
    user_id: str
    client: httpx.Client


@pytest.fixture
def user(live: LiveServer) -> Iterator[SignedIn]:
    token, user_id, client = live.login(f"ws-{uuid.uuid4().hex[:8]}@example.com")
    yield SignedIn(token, user_id, client)
    client.close()


@pytest.fixture
def ws_helper(live: LiveServer, user: SignedIn) -> Iterator[WSHelper]:
    """An authenticated, registered WebSocket (the seed plan's `ws_client` + `ws_helper`)."""
    with live.ws(user.token) as ws:
        yield ws


@pytest.fixture
def connection_manager(live: LiveServer) -> object:
    return live.manager


@dataclass
class JoinedEdge:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


@pytest.fixture
def joined_edge(
    ray_session: None, gemini_settings: Settings, tmp_path: Path
) -> Iterator[JoinedEdge]:
    """`chatdf serve` joined to the tests' Ray (as an edge joins a cluster), on their database."""
    port = free_port()
    log = tmp_path / "edge.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        # The tests' Ray listens on loopback (api/embedded_ray.py), whatever host it reports.
        RAY_ADDRESS="127.0.0.1:" + ray.get_runtime_context().gcs_address.rsplit(":", 1)[1],
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keep 127.0.0.1 (Ray's single-machine mode)
        RAY_AUTH_MODE="token",  # the token file is the tests' Ray's (RAY_AUTH_TOKEN_PATH)
        RAY_NAMESPACE=gemini_settings.ray_namespace,
        DATABASE_URL=gemini_settings.resolved_database_url,
        DATA_DIR=gemini_settings.data_dir,
        GEMINI_API_KEY="fake-key",
        GEMINI_BASE_URL=gemini_settings.gemini_base_url,
        HEARTBEAT_INTERVAL="0.5",
        LOG_LEVEL="INFO",
    )
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(CHATDF), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_until(healthy, limit_s=90), log.read_text()
        yield JoinedEdge(proc, url, log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
