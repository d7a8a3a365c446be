"""WS-MSG-1/2/3/7/8/9, WS-ERR-1, WS-RECON-2, WS-CLEAN-1 (mid-stream) and the full round trip.

The real google-genai SDK in the session actor talks to the scripted loopback FakeGemini.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import polars as pl
import pytest

from chatdf.db import Database
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer


class Chat:
    """A signed-in user with one conversation on the chat-enabled live server."""

    def __init__(self, live: LiveServer) -> None:
        self.live = live
        self.token, self.user_id, self.client = live.login(f"chat-{uuid.uuid4().hex[:8]}@ex.com")
        self.conv = self.client.post("/conversations").json()["id"]

    def post(self, content: str) -> httpx.Response:
        return self.client.post(f"/conversations/{self.conv}/messages", json={"content": content})

    def detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = self.client.get(f"/conversations/{self.conv}").json()
        return detail

    def attach(self, data_server: FakeDataServer) -> None:
        df = pl.DataFrame({"region": ["N", "S", "N"], "revenue": [10, 20, 5]})
        url = data_server.add(f"/sales-{uuid.uuid4().hex[:6]}.csv", df.write_csv().encode())
        d = self.client.post(f"/conversations/{self.conv}/datasets", json={"url": url}).json()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(
                x["status"] == "ready"
                for x in self.detail()["datasets"]
                if x["id"] == d["dataset_id"]
            ):
                return
            time.sleep(0.05)
        raise AssertionError("dataset did not load")

    def wait_assistant(self, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs: list[dict[str, Any]] = [
                m for m in self.detail()["messages"] if m["role"] == "assistant"
            ]
            if msgs:
                return msgs[-1]
            time.sleep(0.05)
        raise AssertionError("assistant message never saved")


@pytest.fixture
def chat(chat_live: LiveServer) -> Iterator[Chat]:
    c = Chat(chat_live)
    yield c
    c.client.close()


def types_of(frames: list[dict[str, Any]]) -> list[str]:
    return [
        f["type"] if f["type"] != "query_status" else f"query_status({f['phase']})" for f in frames
    ]


def test_ws_msg_1_tokens_carry_text_and_message_id(chat: Chat, fake_gemini: FakeGemini) -> None:
    """WS-MSG-1: the answer arrives as chat_token frames with token and message_id, in order."""
    fake_gemini.script_text("Hello there, data friend.", chunks=3, usage=(12, 6))
    with chat.live.ws(chat.token) as ws:
        r = chat.post("hi")
        assert r.status_code == 202
        assert r.json()["status"] == "processing"
        message_id = r.json()["message_id"]
        frames = ws.receive_until("chat_complete")
    tokens = [f for f in frames if f["type"] == "chat_token"]
    assert len(tokens) == 3
    assert all(t["message_id"] == message_id and t["conversation_id"] == chat.conv for t in tokens)
    assert "".join(t["token"] for t in tokens) == "Hello there, data friend."


def test_ws_msg_2_complete_carries_message_id_and_token_count(
    chat: Chat, fake_gemini: FakeGemini
) -> None:
    """WS-MSG-2: the turn ends with one chat_complete: message_id, token_count, saved message."""
    fake_gemini.script_text("Hello there, data friend.", chunks=3, usage=(12, 6))
    with chat.live.ws(chat.token) as ws:
        message_id = chat.post("hi").json()["message_id"]
        frames = ws.receive_until("chat_complete")
    assert types_of(frames).count("chat_complete") == 1
    done = frames[-1]
    assert done["message_id"] == message_id
    assert done["token_count"] == 18
    assert done["sql_query"] is None
    assert done["message"]["id"] == message_id
    assert done["message"]["content"] == "Hello there, data friend."
    assert chat.wait_assistant()["content"] == done["message"]["content"]


def test_ws_msg_3_model_error_gives_chat_error(chat: Chat, fake_gemini: FakeGemini) -> None:
    """WS-MSG-3: a model failure during processing arrives as chat_error with a sentence."""
    fake_gemini.script_error(400, "Request contains an invalid argument.")
    with chat.live.ws(chat.token) as ws:
        message_id = chat.post("hi").json()["message_id"]
        frames = ws.receive_until("chat_error")
    err = frames[-1]
    assert err["error"] and err["message_id"] == message_id
    assert "chat_complete" not in types_of(frames)


def test_ws_msg_7_full_round_trip_phases_tokens_complete(
    chat: Chat, fake_gemini: FakeGemini, data_server: FakeDataServer
) -> None:
    """WS-MSG-7 + the seed's full round trip: every phase in order, tokens, complete, saved."""
    chat.attach(data_server)
    sql = "SELECT region, SUM(revenue) AS total FROM table1 GROUP BY region ORDER BY region"
    fake_gemini.script_sql(sql, text="Let me check. ")
    fake_gemini.script_text("North has 15 and South has 20.", chunks=2)
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
    assert done["sql_query"] == sql
    # the SQL result went back to the model as a function response
    response = fake_gemini.requests[-1].function_responses()[-1]
    assert "N" in str(response) and "20" in str(response)
    saved = chat.wait_assistant()
    assert saved["id"] == message_id
    assert saved["content"] == "Let me check. \n\nNorth has 15 and South has 20."
    assert "".join(f["token"] for f in frames if f["type"] == "chat_token") == saved["content"]
    assert saved["sql_query"] == sql
    assert saved["token_count"] == done["token_count"] > 0
    assert [m["role"] for m in chat.detail()["messages"]] == ["user", "assistant"]


def test_ws_err_1_error_mid_turn_keeps_socket_usable(chat: Chat, fake_gemini: FakeGemini) -> None:
    """WS-ERR-1: an error during processing sends chat_error; the socket keeps working."""
    fake_gemini.script_error(500)
    fake_gemini.script_error(500)
    fake_gemini.script_error(500)
    fake_gemini.script_error(500)  # retries exhausted
    fake_gemini.script_text("Second time lucky.", chunks=1)
    with chat.live.ws(chat.token) as ws:
        chat.post("first")
        ws.receive_until("chat_error")
        r = chat.post("again")
        assert r.status_code == 202
        frames = ws.receive_until("chat_complete")
    assert frames[-1]["message"]["content"] == "Second time lucky."


def test_ws_recon_2_disconnect_mid_stream_no_resume_no_replay(
    chat: Chat, fake_gemini: FakeGemini
) -> None:
    """WS-RECON-2 + WS-CLEAN-1 edge case: drop mid-stream; the turn finishes and is saved in
    full; the new socket gets no replay of the partial response."""
    reply = fake_gemini.script_text("one two three four", chunks=4, hold_after=2)
    with chat.live.ws(chat.token) as ws:
        chat.post("count")
        first = ws.assert_received_type("query_status")
        assert first["phase"] == "queued"
        ws.receive_until("chat_token")
        assert reply.wait_reached(10)
    # disconnected while the model is held mid-stream
    with chat.live.ws(chat.token) as ws2:
        reply.release()
        saved = chat.wait_assistant()
        assert saved["content"] == "one two three four"
        frames: list[dict[str, Any]] = []
        try:
            while True:
                frames.append(ws2.receive_event(timeout=1.0))
        except TimeoutError:
            pass
    tokens = "".join(f["token"] for f in frames if f["type"] == "chat_token")
    assert "one" not in tokens  # nothing sent before the reconnect is replayed
    assert all(f["type"] in ("chat_token", "chat_complete", "query_status") for f in frames)


def test_stop_keeps_partial_answer(chat: Chat, fake_gemini: FakeGemini) -> None:
    reply = fake_gemini.script_text("partial answer that never ends", chunks=4, hold_after=2)
    with chat.live.ws(chat.token) as ws:
        message_id = chat.post("go").json()["message_id"]
        ws.receive_until("chat_token")
        assert reply.wait_reached(10)
        r = chat.client.post(f"/conversations/{chat.conv}/stop")
        assert r.json() == {"success": True}
        done = ws.receive_until("chat_complete")[-1]
        reply.release()
    saved = chat.wait_assistant()
    assert saved["id"] == message_id == done["message_id"]
    assert saved["content"] and "partial answer that never ends".startswith(saved["content"])
    assert saved["content"] != "partial answer that never ends"
    # a second stop is a no-op
    assert chat.client.post(f"/conversations/{chat.conv}/stop").json() == {"success": True}


def test_second_message_while_running_is_409(chat: Chat, fake_gemini: FakeGemini) -> None:
    reply = fake_gemini.script_text("slow answer", chunks=2, hold_after=1)
    fake_gemini.script_text("other conversation answer", chunks=1)
    assert chat.post("one").status_code == 202
    assert reply.wait_reached(10)
    r = chat.post("two")
    assert r.status_code == 409
    assert r.json()["error"] == "A response is already being generated for this conversation"
    other = chat.client.post("/conversations").json()["id"]
    r = chat.client.post(f"/conversations/{other}/messages", json={"content": "parallel"})
    assert r.status_code == 202  # turns in different conversations run at the same time
    reply.release()
    chat.wait_assistant()
    assert [m["role"] for m in chat.detail()["messages"]] == ["user", "assistant"]


def test_no_model_key(ray_session: None, settings: Settings) -> None:
    """Without GEMINI_API_KEY the service runs; chat says why (503 + chat_error)."""
    server = LiveServer(settings).start()
    try:
        c = Chat(server)
        with server.ws(c.token) as ws:
            r = c.post("hello")
            assert r.status_code == 503
            assert "GEMINI_API_KEY" in r.json()["error"]
            assert "GEMINI_API_KEY" in ws.assert_received_type("chat_error")["error"]
        assert c.detail()["messages"] == []
        assert server.client().get("/health").json()["llm_configured"] is False
    finally:
        server.stop()


def test_ws_msg_8_warning_after_turn_over_80_percent(
    ray_session: None, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """WS-MSG-8: a turn that leaves usage at or above 80% is followed by rate_limit_warning."""
    server = LiveServer(gemini_settings.model_copy(update={"token_limit": 100})).start()
    try:
        c = Chat(server)
        fake_gemini.script_text("big answer", chunks=1, usage=(60, 25))
        with server.ws(c.token) as ws:
            c.post("hi")
            frames = ws.receive_until("rate_limit_warning")
        assert types_of(frames)[-2:] == ["chat_complete", "rate_limit_warning"]
        warning = frames[-1]
        assert warning["usage_percent"] == 85.0
        assert warning["remaining_tokens"] == 15
        usage = c.client.get("/usage").json()
        assert usage["tokens_used"] == 85 and usage["remaining"] == 15
    finally:
        server.stop()


def test_ws_msg_9_exceeded_refuses_with_429_and_event(
    ray_session: None,
    gemini_settings: Settings,
    fake_gemini: FakeGemini,
    data_server: FakeDataServer,
) -> None:
    """WS-MSG-9: at the limit a message gets 429 and rate_limit_exceeded; datasets still work."""
    server = LiveServer(gemini_settings.model_copy(update={"token_limit": 50})).start()
    try:
        c = Chat(server)
        fake_gemini.script_text("costly", chunks=1, usage=(40, 20))  # running turn not cut off
        with server.ws(c.token) as ws:
            c.post("first")
            done = ws.receive_until("chat_complete")[-1]
            assert done["message"]["content"] == "costly"
            r = c.post("second")
            assert r.status_code == 429
            assert "error" in r.json()
            exceeded = ws.receive_until("rate_limit_exceeded")[-1]
        assert 86_000 <= exceeded["resets_in_seconds"] <= 86_400
        assert c.client.get("/usage").json()["remaining"] == 0
        assert fake_gemini.pending() == 0  # no model call for the refused message
        roles = [m["role"] for m in c.detail()["messages"]]
        assert roles == ["user", "assistant"]  # the refused message changed nothing
        c.attach(data_server)  # dataset routes keep working
        r = c.client.post(
            f"/conversations/{c.conv}/query", json={"sql": "SELECT COUNT(*) AS n FROM table1"}
        )
        assert r.status_code == 200 and r.json()["rows"] == [[3]]
    finally:
        server.stop()


def test_usage_recorded_in_database(chat: Chat, fake_gemini: FakeGemini) -> None:
    fake_gemini.script_text("x", chunks=1, usage=(7, 3))
    with chat.live.ws(chat.token) as ws:
        chat.post("hi")
        ws.receive_until("chat_complete")
    from sqlalchemy import func, select

    from chatdf.db import TokenUsage

    db = Database(chat.live.settings.resolved_database_url)
    with db.session() as s:
        total = s.scalar(
            select(func.sum(TokenUsage.input_tokens + TokenUsage.output_tokens)).where(
                TokenUsage.user_id == chat.user_id
            )
        )
    assert total == 10
