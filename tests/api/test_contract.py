"""The REST half of protocol.md, line by line: route shapes, status codes, texts, sessions."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import httpx
import polars as pl
import pytest

from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.live import LiveServer, wait_until
from tests.pg import SERVER_URL, fresh_database

WEEK_S = 7 * 24 * 3600
MESSAGE_KEYS = {"id", "role", "content", "sql_query", "token_count", "created_at"}
DATASET_KEYS = {"id", "name", "url", "status", "row_count", "column_count", "schema"}


def csv_bytes() -> bytes:
    return pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]}).write_csv().encode()


def assert_error(r: httpx.Response, status: int, error: str | None = None) -> None:
    assert r.status_code == status, (r.request.url, r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "details"}, body
    if error is not None:
        assert body["error"] == error, body


def assert_uuid(value: object) -> None:
    assert isinstance(value, str) and str(uuid.UUID(value)) == value


def assert_utc(value: object) -> None:
    assert isinstance(value, str) and value.endswith("Z"), value
    assert datetime.fromisoformat(value.replace("Z", "+00:00")).utcoffset() == timedelta(0)


def assert_dataset(d: dict[str, Any]) -> None:
    """The documented dataset object (extra fields are allowed, none may be missing)."""
    assert set(d) >= DATASET_KEYS, d
    assert_uuid(d["id"])
    assert isinstance(d["name"], str) and isinstance(d["url"], str)
    assert d["status"] in ("loading", "ready", "error")
    if d["status"] == "ready":
        assert isinstance(d["row_count"], int) and isinstance(d["column_count"], int)
        assert d["schema"] and all(set(c) == {"name", "type"} for c in d["schema"])
    assert isinstance(d["schema"], list)


def wait_ready(client: httpx.Client, conv: str, dataset_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for d in client.get(f"/conversations/{conv}").json()["datasets"]:
            if d["id"] == dataset_id and d["status"] != "loading":
                assert d["status"] == "ready", d
                return d  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError("dataset still loading")


# Conversations --------------------------------------------------------------------------------


def test_conversation_routes_answer_the_documented_shapes(client: httpx.Client) -> None:
    r = client.post("/conversations")
    assert r.status_code == 201
    created = r.json()
    assert set(created) == {"id", "title", "created_at"}
    assert_uuid(created["id"])
    assert_utc(created["created_at"])
    conv = created["id"]

    listed = client.get("/conversations").json()
    assert set(listed) == {"conversations"}
    assert set(listed["conversations"][0]) == {
        "id",
        "title",
        "created_at",
        "updated_at",
        "dataset_count",
    }

    detail = client.get(f"/conversations/{conv}").json()
    assert {"id", "title", "created_at", "updated_at", "messages", "datasets"} <= set(detail)
    assert detail["messages"] == [] and detail["datasets"] == []

    renamed = client.patch(f"/conversations/{conv}", json={"title": "Sales"})
    assert renamed.status_code == 200
    assert set(renamed.json()) == {"id", "title", "updated_at"}
    assert_error(client.patch(f"/conversations/{conv}", json={"title": "x" * 101}), 400)

    assert client.post(f"/conversations/{conv}/stop").json() == {"success": True}
    assert client.delete(f"/conversations/{conv}").json() == {"success": True}
    assert_error(client.get(f"/conversations/{conv}"), 404)
    client.post("/conversations")
    assert client.delete("/conversations").json() == {"success": True, "deleted_count": 1}


# Datasets -------------------------------------------------------------------------------------


def test_dataset_routes_answer_the_dataset_object(
    client: httpx.Client, data_server: FakeDataServer
) -> None:
    conv = client.post("/conversations").json()["id"]
    url = data_server.add("/contract.csv", csv_bytes())
    r = client.post(f"/conversations/{conv}/datasets", json={"url": url})
    assert r.status_code == 201
    assert r.json()["status"] == "loading" and set(r.json()) == {"dataset_id", "status"}
    dataset_id = r.json()["dataset_id"]
    stored = wait_ready(client, conv, dataset_id)
    assert_dataset(stored)
    assert stored["url"] == url and stored["name"] == "table1"

    path = f"/conversations/{conv}/datasets/{dataset_id}"
    renamed = client.patch(path, json={"table_name": "people"})
    assert renamed.status_code == 200
    assert_dataset(renamed.json())
    assert renamed.json() == client.get(f"/conversations/{conv}").json()["datasets"][0]
    assert client.patch(path, json={"tableName": "folks"}).json()["name"] == "folks"

    refreshed = client.post(f"{path}/refresh")
    assert refreshed.status_code == 200
    assert_dataset(refreshed.json())
    assert refreshed.json() == client.get(f"/conversations/{conv}").json()["datasets"][0]

    query = client.post(f"/conversations/{conv}/query", json={"sql": "SELECT * FROM folks"})
    assert query.status_code == 200
    assert set(query.json()) == {"columns", "rows", "total_rows", "truncated", "execution_ms"}

    assert client.delete(path).json() == {"success": True}


BAD_URLS: list[dict[str, Any]] = [
    {},
    {"url": 5},
    {"url": None},
    {"url": ["https://x.io/a.csv"]},
    {"url": "https://x.io/" + "a" * 3000},
    {"url": "  "},
    {"url": "ftp://x.io/a.csv"},
]


def test_every_unusable_url_is_invalid_url_format(client: httpx.Client) -> None:
    """The contract names one 400 text for a bad URL; a missing or non-string one is bad too."""
    conv = client.post("/conversations").json()["id"]
    for body in BAD_URLS:
        r = client.post(f"/conversations/{conv}/datasets", json=body)
        assert_error(r, 400, "Invalid URL format")
    assert client.get(f"/conversations/{conv}").json()["datasets"] == []


def test_concurrent_adds_keep_the_rules_and_never_500(
    client: httpx.Client, data_server: FakeDataServer
) -> None:
    """Races between adds still give 'already loaded' / 'Maximum 5', unique table names."""
    conv = client.post("/conversations").json()["id"]
    same = data_server.add("/same.csv", csv_bytes())
    path = f"/conversations/{conv}/datasets"
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.post(path, json={"url": same}), range(4)))
    assert sorted(r.status_code for r in answers) == [201, 400, 400, 400], [a.text for a in answers]
    for r in answers:
        if r.status_code == 400:
            assert_error(r, 400, "This dataset is already loaded")

    # The first one's load done: the adds below race each other for the last 4 places, not
    # that load for MAX_CONCURRENT_LOADS_PER_USER (5 loading at once answers 429).
    def first_ready() -> bool:
        datasets = client.get(f"/conversations/{conv}").json()["datasets"]
        return bool(datasets) and datasets[0]["status"] == "ready"

    assert wait_until(first_ready)
    urls = [data_server.add(f"/many{i}.csv", csv_bytes()) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda u: client.post(path, json={"url": u}), urls))
    assert sorted(r.status_code for r in answers) == [201] * 4 + [400] * 2, [
        a.text for a in answers
    ]
    for r in answers:
        if r.status_code == 400:
            assert_error(r, 400, "Maximum 5 datasets reached")
    names = [d["name"] for d in client.get(f"/conversations/{conv}").json()["datasets"]]
    assert len(names) == 5 and len(set(names)) == 5, names


# Chat routes without a model ------------------------------------------------------------------


def test_messages_to_someone_elses_conversation_are_404(live: LiveServer) -> None:
    _t, _u, owner = live.login(f"owner-{uuid.uuid4().hex[:8]}@example.com")
    _t, _u, other = live.login(f"other-{uuid.uuid4().hex[:8]}@example.com")
    with owner, other:
        conv = owner.post("/conversations").json()["id"]
        for method, path, body in [
            ("POST", f"/conversations/{conv}/messages", {"content": "hi"}),
            ("POST", f"/conversations/{conv}/messages", {"content": ""}),  # 404 before 400
            ("POST", f"/conversations/{conv}/stop", None),
            ("POST", f"/conversations/{conv}/query", {"sql": "SELECT 1"}),
            ("POST", f"/conversations/{conv}/datasets", {"url": 5}),
        ]:
            assert_error(other.request(method, path, json=body), 404)


# Usage ----------------------------------------------------------------------------------------


def test_usage_body(client: httpx.Client) -> None:
    usage = client.get("/usage").json()
    assert set(usage) == {
        "tokens_used",
        "token_limit",
        "remaining",
        "usage_percent",
        "resets_in_seconds",
    }
    assert usage["tokens_used"] == 0 and usage["remaining"] == usage["token_limit"] == 5_000_000
    assert usage["usage_percent"] == 0 and usage["resets_in_seconds"] == 0


# CORS -----------------------------------------------------------------------------------------


def test_refused_cors_preflight_has_the_error_body(live: LiveServer) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    with live.client() as anon:
        r = anon.options("/conversations", headers={**preflight, "Origin": "http://evil.example"})
        assert_error(r, 400)
        allowed = live.settings.allowed_origins[0]
        r = anon.options("/conversations", headers={**preflight, "Origin": allowed})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == allowed


# Auth -----------------------------------------------------------------------------------------


def test_auth_bodies_with_only_optional_fields_may_be_left_out(live: LiveServer) -> None:
    """`{email?, name?, referral_key?}` and `{referral_key?}`: no body at all is a valid request."""
    with live.client() as anon:
        r = anon.post("/auth/dev-login")
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"token", "user"}
        r = anon.post("/auth/google")
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"redirect_url"}


def test_cookie_sessions_are_extended_on_use(live: LiveServer) -> None:
    """The server extends the session on use; so must the cookie, or the browser drops it."""
    token = live.login(f"cookie-{uuid.uuid4().hex[:8]}@example.com")[0]
    with httpx.Client(base_url=live.url, cookies={"session_token": token}) as browser:
        r = browser.get("/conversations")
        assert r.status_code == 200
        cookies = [c for c in r.headers.get_list("set-cookie") if c.startswith("session_token=")]
        assert len(cookies) == 1, r.headers
        attrs = {a.strip().lower() for a in cookies[0].split(";")}
        assert f"session_token={token}".lower() in attrs
        assert f"max-age={WEEK_S}" in attrs and "httponly" in attrs
        # Logout still clears it (no fresh cookie on top of the deletion).
        out = browser.post("/auth/logout")
        cleared = [c for c in out.headers.get_list("set-cookie") if c.startswith("session_token=")]
        assert len(cleared) == 1 and "max-age=0" in cleared[0].lower()
    with live.client(token) as bearer:  # the session really ended
        assert bearer.get("/auth/me").status_code == 401


def test_bearer_requests_get_no_cookie(live: LiveServer) -> None:
    _token, _uid, bearer = live.login(f"bearer-{uuid.uuid4().hex[:8]}@example.com")
    with bearer:
        r = bearer.get("/conversations")
        assert r.status_code == 200 and "set-cookie" not in r.headers


def test_documented_defaults_and_setting_names(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert defaults.session_ttl_s == WEEK_S
    assert defaults.heartbeat_interval == 30
    assert defaults.max_datasets_per_conversation == 5
    assert defaults.query_max_rows == 1000 and defaults.query_timeout_s == 60
    assert defaults.max_tool_calls == 5 and defaults.max_sql_retries == 3
    assert defaults.context_max_messages == 50
    assert defaults.token_limit == 5_000_000 and defaults.token_window_s == 24 * 3600
    monkeypatch.setenv("HEARTBEAT_INTERVAL", "12")
    monkeypatch.setenv("HEARTBEAT_TIMEOUT", "34")
    from_env = Settings()
    assert (from_env.heartbeat_interval, from_env.heartbeat_timeout) == (12, 34)


@pytest.mark.postgres
def test_values_postgres_cannot_store_are_400_not_500(
    ray_session: None, gemini_settings: Settings
) -> None:
    """PostgreSQL refuses NUL characters in text; that is bad input, never a 500."""
    if not SERVER_URL:
        pytest.skip("POSTGRES_TEST_URL is not set (scripts/test.sh starts a server when it can)")
    with fresh_database() as url:
        server = LiveServer(gemini_settings.model_copy(update={"database_url": url})).start()
        try:
            _t, _u, client = server.login("nul@example.com")
            with client:
                conv = client.post("/conversations").json()["id"]
                for method, path, body in [
                    ("POST", "/conversations", {"title": "a\x00b"}),
                    ("PATCH", f"/conversations/{conv}", {"title": "a\x00b"}),
                    ("POST", f"/conversations/{conv}/messages", {"content": "hi\x00"}),
                    ("GET", "/conversations/%00", None),
                ]:
                    assert_error(client.request(method, path, json=body), 400)
                # The owner check asks for many requests' ids in one query: a NUL id is never
                # sent (it would fail them all), it names no conversation.
                assert_error(client.post("/conversations/%00/messages", json={"content": "x"}), 404)
                assert client.get(f"/conversations/{conv}").json()["messages"] == []
            with server.client() as anon:
                assert_error(anon.post("/auth/dev-login", json={"email": "x\x00@e.com"}), 400)
                r = anon.get("/auth/google/callback", params={"state": "s\x00", "code": "c"})
                assert r.status_code == 400 and set(r.json()) == {"error", "details"}
        finally:
            server.stop()
