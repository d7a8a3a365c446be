"""A session actor that dies mid-turn or mid-load: the user's sockets still get a terminal event."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import ray

from actors.answers import ANSWER_INTERRUPTED
from actors.session_ray import get_session_actor
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer, wait_until
from ws.inflight import LOAD_LOST, TURN_LOST


@pytest.fixture
def saving_live(ray_session: None, gemini_settings: Settings) -> Iterator[LiveServer]:
    """The chat edge with the streamed part of a turn saved every 0.1 s."""
    server = LiveServer(gemini_settings.model_copy(update={"turn_save_interval_s": 0.1})).start()
    yield server
    server.stop()


def _messages(client: httpx.Client, conv: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = client.get(f"/conversations/{conv}").json()["messages"]
    return messages


def test_the_streamed_part_of_a_turn_survives_the_actors_death(
    saving_live: LiveServer, fake_gemini: FakeGemini
) -> None:
    token, user_id, client = saving_live.login("saved-as-it-streams@example.com")
    conv = client.post("/conversations").json()["id"]
    reply = fake_gemini.script_text("first part. second part.", chunks=2, hold_after=1)
    try:
        with saving_live.ws(token) as ws:
            client.post(f"/conversations/{conv}/messages", json={"content": "tell me"})
            first = ws.receive_until("chat_token")[-1]
            # Saved while the model still holds the rest back: the row is there mid-turn.
            assert wait_until(lambda: len(_messages(client, conv)) == 2, 20)
            ray.kill(get_session_actor(user_id, saving_live.settings), no_restart=True)
            assert ws.receive_until("chat_error")[-1]["error"] == TURN_LOST
        question, answer = _messages(client, conv)
        assert (question["role"], question["content"]) == ("user", "tell me")
        assert (answer["id"], answer["role"]) == (first["message_id"], "assistant")
        assert answer["content"] == first["token"]
        # The user's next actor closes the answer its predecessor left streaming.
        assert client.get("/usage").status_code == 200
        closed = _messages(client, conv)[1]
        assert closed["content"] == f"{first['token'].rstrip()}\n\n{ANSWER_INTERRUPTED}"
    finally:
        reply.release()
        client.close()


def test_a_turn_saved_as_it_streams_still_ends_as_one_assistant_message(
    saving_live: LiveServer, fake_gemini: FakeGemini
) -> None:
    token, _, client = saving_live.login("one-row-per-answer@example.com")
    conv = client.post("/conversations").json()["id"]
    reply = fake_gemini.script_text("alpha beta gamma", chunks=3, hold_after=1)
    with saving_live.ws(token) as ws:
        client.post(f"/conversations/{conv}/messages", json={"content": "go"})
        first = ws.receive_until("chat_token")[-1]
        assert wait_until(lambda: len(_messages(client, conv)) == 2, 20)
        partial = _messages(client, conv)[1]
        reply.release()
        done = ws.receive_until("chat_complete")[-1]
    messages = _messages(client, conv)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["id"] == partial["id"] == first["message_id"] == done["message_id"]
    assert messages[1]["content"] == "alpha beta gamma" == done["message"]["content"]
    assert partial["content"] == first["token"]
    client.close()


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


def test_a_tab_on_another_edge_opened_mid_turn_also_gets_the_turns_end(
    chat_live: LiveServer, fake_gemini: FakeGemini
) -> None:
    """The other edge subscribes after the turn began, so it saw none of the turn's events: the
    actor's list of what it runs (the stream's first item) still lets it end the turn there."""
    token, user_id, client = chat_live.login("late-tab-elsewhere@example.com")
    conv = client.post("/conversations").json()["id"]
    reply = fake_gemini.script_text("one two three", chunks=3, hold_after=1)
    other = LiveServer(chat_live.settings).start()
    try:
        with chat_live.ws(token) as early:
            client.post(f"/conversations/{conv}/messages", json={"content": "hi"})
            first = early.receive_until("chat_token")[-1]
            actor = get_session_actor(user_id, chat_live.settings)
            with other.ws(token) as late:
                assert wait_until(lambda: len(ray.get(actor.check_health.remote())["edges"]) == 2)
                ray.kill(actor, no_restart=True)
                for tab in (early, late):
                    end = tab.receive_until("chat_error")[-1]
                    assert (end["error"], end["conversation_id"]) == (TURN_LOST, conv)
                    assert end["message_id"] == first["message_id"]
    finally:
        reply.release()
        client.close()
        other.stop()
