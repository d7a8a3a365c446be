"""A session actor that dies mid-turn or mid-load: the user's sockets still get a terminal event."""

from __future__ import annotations

import ray

from actors.session import get_session_actor
from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer
from ws.inflight import LOAD_LOST, TURN_LOST


def test_a_turn_interrupted_by_the_actors_death_ends_in_chat_error(
    chat_live: LiveServer, fake_gemini: FakeGemini
) -> None:
    token, user_id, client = chat_live.login("dies-mid-turn@example.com")
    conv = client.post("/conversations").json()["id"]
    reply = fake_gemini.script_text("one two three", chunks=3, hold_after=1)
    try:
        with chat_live.ws(token) as ws:
            client.post(f"/conversations/{conv}/messages", json={"content": "hi"})
            first = ws.receive_until("chat_token")[-1]
            ray.kill(get_session_actor(user_id, chat_live.settings), no_restart=True)
            end = ws.receive_until("chat_error")[-1]
            assert end["error"] == TURN_LOST
            assert end["conversation_id"] == conv
            assert end["message_id"] == first["message_id"]
    finally:
        reply.release()
        client.close()


def test_a_load_interrupted_by_the_actors_death_ends_in_dataset_error(
    live: LiveServer, data_server: FakeDataServer
) -> None:
    token, user_id, client = live.login("dies-mid-load@example.com")
    conv = client.post("/conversations").json()["id"]
    url = data_server.add("/hangs.csv", b"a\n1\n", stall=True)
    with live.ws(token) as ws:
        dataset = client.post(f"/conversations/{conv}/datasets", json={"url": url}).json()
        assert ws.receive_event()["type"] == "dataset_loading"
        ray.kill(get_session_actor(user_id, live.settings), no_restart=True)
        end = ws.receive_until("dataset_error")[-1]
        assert (end["dataset_id"], end["error"]) == (dataset["dataset_id"], LOAD_LOST)
    client.close()
