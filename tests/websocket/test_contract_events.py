"""The WebSocket half of protocol.md: every event's fields, conversation ids, shapes, pings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import polars as pl
import pytest

from chatdf.events import parse_event
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer

MESSAGE_KEYS = {"id", "role", "content", "sql_query", "token_count", "created_at"}
DATASET_KEYS = {"id", "name", "url", "status", "row_count", "column_count", "schema"}
# What the Events table lists for each type (conversation_id comes on top, checked apart).
FIELDS = {
    "chat_token": {"token", "message_id"},
    "chat_complete": {"message_id", "token_count", "sql_query", "message"},
    "chat_error": {"error"},
    "dataset_loading": {"dataset_id", "url", "status"},
    "dataset_loaded": {"dataset_id", "name", "row_count", "column_count", "schema", "dataset"},
    "dataset_error": {"dataset_id", "error"},
    "query_status": {"phase"},
    "rate_limit_warning": {"usage_percent", "remaining_tokens"},
    "rate_limit_exceeded": {"resets_in_seconds"},
}


class User:
    def __init__(self, live: LiveServer) -> None:
        self.live = live
        self.token, self.user_id, self.client = live.login(f"ev-{uuid.uuid4().hex[:8]}@ex.com")
        self.conv: str = self.client.post("/conversations").json()["id"]

    def post(self, content: str) -> httpx.Response:
        return self.client.post(f"/conversations/{self.conv}/messages", json={"content": content})

    def detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = self.client.get(f"/conversations/{self.conv}").json()
        return detail


@pytest.fixture
def user(chat_live: LiveServer) -> Iterator[User]:
    u = User(chat_live)
    yield u
    u.client.close()


def check(frames: list[dict[str, Any]], conv: str) -> None:
    """Each frame parses, has its documented fields, and names the conversation."""
    for frame in frames:
        parse_event(frame)
        assert FIELDS[frame["type"]] <= set(frame), frame
        assert frame["conversation_id"] == conv, frame


def test_dataset_and_turn_events_carry_the_documented_fields(
    user: User, fake_gemini: FakeGemini, data_server: FakeDataServer
) -> None:
    good = data_server.add(
        "/ev.csv", pl.DataFrame({"k": ["a", "b"], "v": [1, 2]}).write_csv().encode()
    )
    missing = data_server.add("/gone.csv", b"", status=404)
    with user.live.ws(user.token) as ws:
        # Padded URL: the event names the URL as stored, the one GET shows.
        r = user.client.post(f"/conversations/{user.conv}/datasets", json={"url": f" {good} "})
        assert r.status_code == 201
        frames = ws.receive_until("dataset_loaded")
        r = user.client.post(f"/conversations/{user.conv}/datasets", json={"url": missing})
        frames += ws.receive_until("dataset_error")
        check(frames, user.conv)
        stored = {d["id"]: d for d in user.detail()["datasets"]}
        loading, loaded = frames[0], frames[1]
        assert loading["type"] == "dataset_loading" and loading["status"] == "loading"
        assert loading["url"] == good == stored[loading["dataset_id"]]["url"]
        assert loaded["dataset"] == stored[loaded["dataset_id"]]
        assert set(loaded["dataset"]) >= DATASET_KEYS
        assert loaded["schema"] == loaded["dataset"]["schema"]
        assert [c["name"] for c in loaded["schema"]] == ["k", "v"]
        assert all(set(c) == {"name", "type"} for c in loaded["schema"])
        assert frames[-1]["dataset_id"] == r.json()["dataset_id"] and frames[-1]["error"]

        sql = "SELECT k, v FROM table1 ORDER BY k"
        fake_gemini.script_sql(sql, text="Checking. ")
        fake_gemini.script_text("a is 1, b is 2.", chunks=2)
        message_id = user.post("values?").json()["message_id"]
        turn = ws.receive_until("chat_complete")
        check(turn, user.conv)
        assert all(f["message_id"] == message_id for f in turn if f["type"] == "chat_token")
        done = turn[-1]
        saved = user.detail()["messages"][-1]
        assert set(saved) >= MESSAGE_KEYS and done["message"] == saved
        assert done["message_id"] == saved["id"] == message_id
        assert done["sql_query"] == saved["sql_query"] == sql
        assert done["token_count"] == saved["token_count"] > 0

        fake_gemini.script_error(400, "Request contains an invalid argument.")
        failed_id = user.post("again").json()["message_id"]
        failed = ws.receive_until("chat_error")
        check(failed, user.conv)
        assert failed[-1]["message_id"] == failed_id and failed[-1]["error"]


def test_budget_events_name_the_conversation(
    ray_session: None, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """rate_limit_warning follows chat_complete; rate_limit_exceeded comes with the 429."""
    server = LiveServer(gemini_settings.model_copy(update={"token_limit": 100})).start()
    try:
        u = User(server)
        fake_gemini.script_text("most of it", chunks=1, usage=(60, 40))
        with server.ws(u.token) as ws:
            assert u.post("hi").status_code == 202
            frames = ws.receive_until("rate_limit_warning")
            assert [f["type"] for f in frames[-2:]] == ["chat_complete", "rate_limit_warning"]
            r = u.post("more")
            assert r.status_code == 429 and set(r.json()) == {"error", "details"}
            frames += ws.receive_until("rate_limit_exceeded")
            check(frames, u.conv)
            assert isinstance(frames[-1]["resets_in_seconds"], int)
        u.client.close()
    finally:
        server.stop()


def test_ping_is_exactly_the_documented_frame(ray_session: None, settings: Settings) -> None:
    fast = settings.model_copy(update={"heartbeat_interval": 0.1, "heartbeat_timeout": 5.0})
    server = LiveServer(fast).start()
    try:
        token, _uid, client = server.login(f"ping-{uuid.uuid4().hex[:8]}@ex.com")
        with server.ws(token) as ws:
            assert ws.receive_json(timeout=5) == {"type": "ping"}
            parse_event({"type": "ping"})
        client.close()
    finally:
        server.stop()


def test_cookie_auth_without_an_allowed_origin_closes_4001(live: LiveServer) -> None:
    """With a cookie, the Origin header must be an allowed origin; a missing one is not."""
    token, user_id, client = live.login(f"origin-{uuid.uuid4().hex[:8]}@ex.com")
    cookie = {"Cookie": f"session_token={token}"}
    with live.ws(None, additional_headers=cookie) as ws:
        assert ws.close_code() == 4001
    # Accepted sockets are registered before the handshake completes.
    with live.ws(None, additional_headers=cookie, origin=live.settings.allowed_origins[0]):
        assert live.manager.count(user_id) == 1
    with live.ws(token):  # a token in the URL needs no Origin
        assert live.manager.count(user_id) >= 1
    client.close()
