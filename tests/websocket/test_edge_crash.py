"""An edge killed mid-turn on a shared (cluster) Ray: the turn belongs to the session actor, so
it finishes and is saved, and another edge reads the answer."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.sync.client import connect

from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer, wait_until
from tests.websocket.conftest import JoinedEdge

pytestmark = pytest.mark.slow


def test_a_turn_in_flight_survives_its_edges_death(
    joined_edge: JoinedEdge,
    chat_live: LiveServer,
    fake_gemini: FakeGemini,
) -> None:
    proc, url = joined_edge.proc, joined_edge.url
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
