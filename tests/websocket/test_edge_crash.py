"""An edge killed mid-turn on a shared (cluster) Ray: the turn belongs to the session actor, so
it finishes and is saved, and another edge reads the answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from websockets.sync.client import connect

from chatdf.settings import Settings
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer, free_port, wait_until

pytestmark = pytest.mark.slow
CHATDF = Path(sys.executable).parent / "chatdf"


@pytest.fixture
def edge_process(
    ray_session: None, gemini_settings: Settings, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
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
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_a_turn_in_flight_survives_its_edges_death(
    edge_process: tuple[subprocess.Popen[bytes], str],
    chat_live: LiveServer,
    fake_gemini: FakeGemini,
) -> None:
    proc, url = edge_process
    token, _, other_edge = chat_live.login("edge-dies-mid-turn@example.com")
    conv = other_edge.post("/conversations").json()["id"]
    reply = fake_gemini.script_text("the whole answer, saved.", chunks=2, hold_after=1)
    try:
        ws_url = url.replace("http://", "ws://") + f"/ws?token={token}"
        with connect(ws_url, open_timeout=30) as ws:
            r = httpx.post(
                f"{url}/conversations/{conv}/messages",
                headers={"Authorization": f"Bearer {token}"},
                json={"content": "a question"},
                timeout=30,
            )
            assert r.status_code == 202, r.text
            while json.loads(ws.recv(timeout=30))["type"] != "chat_token":
                pass
            proc.kill()  # the edge that took the message dies mid-turn
            assert proc.wait(timeout=30) == -9
    finally:
        reply.release()

    def answered() -> bool:
        messages = other_edge.get(f"/conversations/{conv}").json()["messages"]
        return len(messages) == 2 and messages[1]["content"] == "the whole answer, saved."

    assert wait_until(answered, limit_s=30), other_edge.get(f"/conversations/{conv}").json()
    # Not left "answering": the conversation takes the next message.
    fake_gemini.script_text("and the next one.")
    again = other_edge.post(f"/conversations/{conv}/messages", json={"content": "next"})
    assert again.status_code == 202, again.text
    other_edge.close()
