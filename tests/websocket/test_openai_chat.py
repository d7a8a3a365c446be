# ruff: noqa: F811 - test arguments name the fixtures imported from tests.fakes.fake_openai
"""MODEL_PROVIDER=openai end to end: the real openai SDK in the session actor on real Ray
talks to FakeOpenAI; the answer arrives over a real WebSocket as for Gemini."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray
from pydantic import SecretStr

from actors.session_ray import get_session_actor
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_openai import (  # noqa: F401 - fixtures
    MODEL,
    FakeOpenAI,
    fake_openai,
    openai_settings,
)
from tests.live import LiveServer
from tests.websocket.test_messages import Chat, types_of


@pytest.fixture
def openai_live(ray_session: None, openai_settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(openai_settings).start()
    yield server
    server.stop()


@pytest.fixture
def chat(openai_live: LiveServer) -> Iterator[Chat]:
    c = Chat(openai_live)
    yield c
    c.client.close()


def test_tool_call_runs_sql_and_the_answer_streams(
    chat: Chat, fake_openai: FakeOpenAI, data_server: FakeDataServer
) -> None:
    chat.attach(data_server)
    sql = "SELECT region, SUM(revenue) AS total FROM table1 GROUP BY region ORDER BY region"
    fake_openai.script_sql(sql, text="Let me check. ", usage=(30, 10))
    fake_openai.script_text("North has 15 and South has 20.", chunks=2, usage=(60, 8))
    with chat.live.ws(chat.token) as ws:
        message_id = chat.post("Revenue by region?").json()["message_id"]
        frames = ws.receive_until("chat_complete")
    compact: list[str] = []
    for t in types_of(frames):
        if not compact or compact[-1] != t:
            compact.append(t)
    assert compact == [
        "query_status(queued)",
        "query_status(generating)",
        "chat_token",
        "query_status(executing)",
        "query_status(formatting)",
        "chat_token",
        "chat_complete",
    ]
    done = frames[-1]
    assert done["message_id"] == message_id and done["sql_query"] == sql
    assert done["token_count"] == 108  # both calls' usage chunks
    [result] = fake_openai.requests[-1].tool_results()
    assert result["tool_call_id"] == "call_fake_1"
    assert result["result"]["rows"] == [["N", 15], ["S", 20]]
    saved = chat.wait_assistant()
    assert saved["content"] == "Let me check. \n\nNorth has 15 and South has 20."
    assert "".join(f["token"] for f in frames if f["type"] == "chat_token") == saved["content"]
    # The usage went into the user's budget.
    usage = chat.client.get("/usage").json()
    assert usage["tokens_used"] == 108
    assert fake_openai.requests[0].body["model"] == MODEL

    actor = get_session_actor(chat.user_id, chat.live.settings)
    health = ray.get(actor.check_health.remote())
    assert health["model_sdks_loaded"] == ["openai"]  # google-genai never imported
    assert health["polars_loaded"] is False


def test_model_error_is_the_same_sentence_as_geminis(chat: Chat, fake_openai: FakeOpenAI) -> None:
    for _ in range(chat.live.settings.llm_max_retries + 1):
        fake_openai.script_error(503, "Service unavailable")
    with chat.live.ws(chat.token) as ws:
        message_id = chat.post("hi").json()["message_id"]
        frames = ws.receive_until("chat_error")
    assert frames[-1]["error"] == "The model could not answer. Try again in a moment."
    assert frames[-1]["message_id"] == message_id


def test_no_key_and_no_base_url_is_503_naming_the_settings(
    ray_session: None, settings: Settings
) -> None:
    unset = settings.model_copy(
        update={"model_provider": "openai", "model_name": MODEL, "model_api_key": SecretStr("")}
    )
    server = LiveServer(unset).start()
    try:
        c = Chat(server)
        with server.ws(c.token) as ws:
            r = c.post("hello")
            assert r.status_code == 503
            error = r.json()["error"]
            assert "MODEL_BASE_URL" in error and "MODEL_API_KEY" in error
            assert ws.assert_received_type("chat_error")["error"] == error
        assert c.detail()["messages"] == []
        health = server.client().get("/health").json()
        assert health["llm_configured"] is False and health["model_provider"] == "openai"
    finally:
        server.stop()
