"""Error bodies over real HTTP: bad input is 400, no session 401, too big 413, never a 500."""

from __future__ import annotations

import http.client
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chatdf.settings import Settings
from tests.live import LiveServer

PUBLIC = {
    ("GET", "/health"),
    ("POST", "/auth/google"),
    ("GET", "/auth/google/callback"),
    ("POST", "/auth/dev-login"),
    # Beyond the contract's four: the bundled sample must be fetchable by the loader's Ray
    # task, which holds no session; it is static and reveals nothing about users.
    ("GET", "/samples/sales.parquet"),
    # Probes (Kubernetes asks without a session; no I/O or a cached database/Ray check), the
    # machine-readable contract beside /openapi.json, the metrics (counts only, no ids), and
    # the chat page with its static files (it signs in itself): docs/operations.md,
    # docs/contracts.md, docs/observability.md, docs/page.md.
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/asyncapi.json"),
    ("GET", "/metrics"),
    ("GET", "/"),
}
MIB = 1024 * 1024


@pytest.fixture
def conv(client: httpx.Client) -> str:
    conversation_id: str = client.post("/conversations").json()["id"]
    return conversation_id


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The contract's error body: `{error: sentence, details: text or null}`, never `detail`."""
    assert response.status_code == status, (response.request.url, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "details"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert body["details"] is None or isinstance(body["details"], str)
    return body


def app_routes(live: LiveServer) -> list[tuple[str, str]]:
    """Every documented (method, path) of the app, from its OpenAPI schema."""
    paths = live.app.openapi()["paths"]
    return sorted(
        (method.upper(), path)
        for path, operations in paths.items()
        for method in operations
        if method in {"get", "post", "put", "patch", "delete"}
    )


def fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), path)


# 401 ------------------------------------------------------------------------------------------


def test_every_route_but_the_public_ones_needs_a_session(live: LiveServer) -> None:
    routes = app_routes(live)
    assert {("GET", "/conversations"), ("POST", "/conversations/{conversation_id}/query")} <= set(
        routes
    )
    bearers = [None, "forged-token-" + "a" * 30]
    for method, path in routes:
        if (method, path) in PUBLIC:
            continue
        for token in bearers:
            with live.client(token) as anon:
                r = anon.request(method, fill(path), json={})
            assert_error(r, 401)


def test_public_routes_answer_without_a_session(live: LiveServer) -> None:
    with live.client() as anon:
        assert anon.get("/health").status_code == 200
        assert anon.post("/auth/google", json={}).status_code == 200
        assert anon.post("/auth/dev-login", json={}).status_code == 200
        assert_error(anon.get("/auth/google/callback"), 403)  # no state: refused, not 401


def test_401_before_404_so_ids_are_not_probed(live: LiveServer) -> None:
    with live.client() as anon:
        assert_error(anon.get(f"/conversations/{uuid.uuid4()}"), 401)
        assert_error(anon.delete("/conversations/not-an-id"), 401)


def test_401_even_when_the_body_is_malformed(live: LiveServer) -> None:
    """Auth is checked before the body is parsed: no session is 401, not a 400 about JSON."""
    with live.client() as anon:
        for body in MALFORMED:
            r = anon.post(
                f"/conversations/{uuid.uuid4()}/messages",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert_error(r, 401)


# 400 ------------------------------------------------------------------------------------------


MALFORMED = [b"{", b"{bad json}", b"nul", b'{"title": }', b"\xff\xfe\x00", b'{"title": "a"', b"'x'"]


def test_malformed_json_is_400(client: httpx.Client, conv: str) -> None:
    headers = {"Content-Type": "application/json"}
    routes = [
        ("POST", "/conversations"),
        ("PATCH", f"/conversations/{conv}"),
        ("POST", f"/conversations/{conv}/messages"),
        ("POST", f"/conversations/{conv}/query"),
        ("POST", f"/conversations/{conv}/datasets"),
        ("POST", "/auth/dev-login"),
        ("POST", "/auth/google"),
    ]
    for raw in MALFORMED:
        for method, path in routes:
            assert_error(client.request(method, path, content=raw, headers=headers), 400)


def test_non_object_bodies_are_400(client: httpx.Client, conv: str) -> None:
    routes = [
        ("POST", "/conversations"),
        ("PATCH", f"/conversations/{conv}"),
        ("POST", f"/conversations/{conv}/messages"),
        ("POST", f"/conversations/{conv}/datasets"),
        ("POST", "/auth/dev-login"),
    ]
    for body in ([1, 2], "text", 3, True, [{"title": "x"}]):
        for method, path in routes:
            assert_error(client.request(method, path, json=body), 400)


BAD_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("/conversations/{c}/datasets", {}),
    ("/conversations/{c}/datasets", {"url": 5}),
    ("/conversations/{c}/datasets", {"url": None}),
    ("/conversations/{c}/datasets", {"url": ["https://x.io/a.csv"]}),
    ("/conversations/{c}/datasets", {"url": "https://x.io/" + "a" * 3000}),
    ("/conversations/{c}/datasets", {"url": ""}),
    ("/conversations/{c}/datasets", {"url": "not a url"}),
    ("/conversations/{c}/messages", {}),
    ("/conversations/{c}/messages", {"content": ""}),
    ("/conversations/{c}/messages", {"content": 5}),
    ("/conversations/{c}/messages", {"content": {"text": "hi"}}),
    ("/conversations/{c}/messages", {"content": "x" * 100_000}),
    ("/auth/dev-login", {"email": 5}),
    ("/auth/dev-login", {"email": ["a@b.c"]}),
    ("/auth/dev-login", {"name": "n" * 1000}),
    ("/auth/google", {"referral_key": 5}),
    ("/conversations", {"title": {"a": 1}}),
]


def test_missing_fields_and_wrong_types_are_400(client: httpx.Client, conv: str) -> None:
    for path, body in BAD_BODIES:
        assert_error(client.post(path.format(c=conv), json=body), 400)


def test_bad_sql_bodies_are_400(client: httpx.Client, conv: str) -> None:
    for body in ({}, {"sql": 5}, {"sql": ""}, {"sql": None}, {"sql": ["SELECT 1"]}):
        assert_error(client.post(f"/conversations/{conv}/query", json=body), 400)


def test_dataset_rename_bad_bodies_are_400(client: httpx.Client, conv: str) -> None:
    path = f"/conversations/{conv}/datasets/{uuid.uuid4()}"
    for body in ({}, {"table_name": 5}, {"table_name": ""}, {"tableName": "1abc"}):
        # The body is checked before the dataset is looked up: 400 even for an unknown id.
        assert_error(client.patch(path, json=body), 400)


def test_wrong_content_type_is_400(client: httpx.Client) -> None:
    r = client.post(
        "/conversations/",
        content=b"title=x",
        headers={"Content-Type": "text/plain"},
        follow_redirects=True,
    )
    assert_error(r, 400)


# 404 / 405 ------------------------------------------------------------------------------------


def test_unknown_route_is_404_body(client: httpx.Client) -> None:
    for path in ("/nope", "/conversations/a/b/c/d", "/auth", "/api/v1/x", "/ws/x"):
        assert_error(client.get(path), 404)
    with httpx.Client(base_url=client.base_url) as anon:
        assert_error(anon.get("/nope"), 404)


def test_wrong_method_is_405_body(client: httpx.Client) -> None:
    assert_error(client.put("/conversations"), 405)
    assert_error(client.get("/auth/logout"), 405)


ODD_IDS = [
    "a" * 5000,
    "☃",
    "\U0001f600" * 20,
    "%2e%2e",
    "..%2F..%2Fauth%2Fme",
    "%00",
    "%20",
    "'; DROP TABLE conversations; --",
    "1 OR 1=1",
    "%25s%25n",
    "null",
    "-1",
    "0" * 36,
    str(uuid.uuid4()).upper(),
    "{conversation_id}",
]


def test_odd_ids_never_500(client: httpx.Client, conv: str) -> None:
    """Any id that is not one of the user's is a plain 404, never a 500."""
    for odd in ODD_IDS:
        for method, path, body in [
            ("GET", f"/conversations/{odd}", None),
            ("PATCH", f"/conversations/{odd}", {"title": "t"}),
            ("DELETE", f"/conversations/{odd}", None),
            ("POST", f"/conversations/{odd}/messages", {"content": "hi"}),
            ("POST", f"/conversations/{odd}/stop", None),
            ("POST", f"/conversations/{odd}/query", {"sql": "SELECT 1"}),
            ("POST", f"/conversations/{odd}/datasets", {"url": "https://x.io/a.csv"}),
            ("PATCH", f"/conversations/{conv}/datasets/{odd}", {"table_name": "t"}),
            ("DELETE", f"/conversations/{conv}/datasets/{odd}", None),
            ("POST", f"/conversations/{conv}/datasets/{odd}/refresh", None),
        ]:
            r = client.request(method, path, json=body)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert_error(r, 404)
    assert client.get("/conversations").json()["conversations"][0]["id"] == conv


def test_dot_segments_cannot_escape_the_conversation(
    live: LiveServer, client: httpx.Client, conv: str
) -> None:
    # Sent byte for byte with http.client (httpx would normalise "../" away first).
    for raw in (f"/conversations/{conv}/../../auth/me", "/conversations/../auth/me"):
        connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
        try:
            connection.request(
                "GET", raw, headers={"Authorization": client.headers["authorization"]}
            )
            response = connection.getresponse()
            status, data = response.status, response.read()
        finally:
            connection.close()
        assert status == 404, (raw, status, data)
        assert set(json.loads(data)) == {"error", "details"}


# 413 ------------------------------------------------------------------------------------------


def test_body_over_one_mib_is_413(client: httpx.Client, conv: str) -> None:
    big = b'{"title": "' + b"x" * (MIB + 10) + b'"}'
    headers = {"Content-Type": "application/json"}
    for method, path in [
        ("POST", "/conversations"),
        ("PATCH", f"/conversations/{conv}"),
        ("POST", f"/conversations/{conv}/messages"),
        ("POST", "/auth/dev-login"),
    ]:
        assert_error(client.request(method, path, content=big, headers=headers), 413)


def test_streamed_body_over_one_mib_is_413(client: httpx.Client) -> None:
    """A chunked body has no Content-Length up front; the limit must still hold."""

    def chunks() -> Iterator[bytes]:
        yield b'{"title": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    headers = {"Content-Type": "application/json"}
    r = client.post("/conversations", content=chunks(), headers=headers)
    assert_error(r, 413)
    assert client.get("/conversations").json()["conversations"] == []


def test_body_just_under_the_limit_is_not_413(client: httpx.Client) -> None:
    body = b'{"title": "' + b"x" * (MIB - 100) + b'"}'
    r = client.post("/conversations", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400)  # too long a title, but read and judged, not refused for size


# Bad input that used to answer 500 (issue 11) ----------------------------------------------


def post_raw(client: httpx.Client, path: str, raw_json: str) -> httpx.Response:
    """A body as literal JSON text (json= would refuse to encode a lone surrogate)."""
    return client.post(path, content=raw_json, headers={"Content-Type": "application/json"})


def test_lone_surrogates_are_400_and_change_nothing(client: httpx.Client, conv: str) -> None:
    before = client.get(f"/conversations/{conv}").json()
    for path, raw in [
        ("/conversations", '{"title": "bad \\ud800 title"}'),
        (f"/conversations/{conv}/messages", '{"content": "hi \\udfff"}'),
        (f"/conversations/{conv}/datasets", '{"url": "http://example.com/\\ud800.csv"}'),
    ]:
        r = post_raw(client, path, raw)
        body = assert_error(r, 400)
        assert (
            body["error"]
            == "The request contains text that is not valid Unicode (a lone surrogate)"
        )
    r = client.patch(
        f"/conversations/{conv}",
        content='{"title": "\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(r, 400)
    assert client.get(f"/conversations/{conv}").json() == before
    assert client.get("/health").status_code == 200  # the same keep-alive connection lives


def test_deeply_nested_sql_is_400_on_a_live_connection(client: httpx.Client, conv: str) -> None:
    sql = "SELECT " + "(" * 2000 + "1" + ")" * 2000
    body = assert_error(client.post(f"/conversations/{conv}/query", json={"sql": sql}), 400)
    assert body["error"].startswith("The SQL is nested too deeply")
    sql = "SELECT " + "NOT " * 3000 + "true"
    assert_error(client.post(f"/conversations/{conv}/query", json={"sql": sql}), 400)
    assert client.get("/health").status_code == 200


def test_invalid_idna_host_is_invalid_url_format(client: httpx.Client, conv: str) -> None:
    for url in ["http://\uff11\uff12\uff13.example.com/x.csv", "http://xn--zz.example/x.csv"]:
        r = client.post(f"/conversations/{conv}/datasets", json={"url": url})
        body = assert_error(r, 400)
        assert body["error"] == "Invalid URL format"
    assert client.get(f"/conversations/{conv}").json()["datasets"] == []


# The database busy, CORS on every answer (issue 11) ----------------------------------------


def test_a_locked_database_is_503_and_never_freezes_the_edge(
    ray_session: None, settings: Settings
) -> None:
    """A write lock held elsewhere: requests that need the database answer 503 in the error
    body once the busy timeout passes, and meanwhile the edge keeps answering others."""
    import sqlite3
    import threading

    server = LiveServer(settings.model_copy(update={"database_busy_timeout_s": 1.0})).start()
    try:
        token, _uid, client = server.login("busy@example.com")
        locker = sqlite3.connect(settings.resolved_database_url.removeprefix("sqlite:///"))
        locker.execute("BEGIN EXCLUSIVE")
        try:
            results: list[httpx.Response] = []
            writer = threading.Thread(target=lambda: results.append(client.post("/conversations")))
            writer.start()
            with httpx.Client(base_url=server.url) as other:  # not frozen behind the writer
                assert other.get("/nope").status_code == 404
            writer.join(30)
            body = assert_error(results[0], 503)
            assert body["error"] == "The database is busy or unavailable; try again in a moment"
        finally:
            locker.rollback()
            locker.close()
        assert client.post("/conversations").status_code == 201  # and back once it is free
        client.close()
    finally:
        server.stop()


def test_401_and_413_carry_cors_headers(live: LiveServer) -> None:
    origin = live.settings.allowed_origins[0]
    with httpx.Client(base_url=live.url, headers={"Origin": origin}) as browser:
        r = browser.get("/conversations")
        assert r.status_code == 401
        assert r.headers["access-control-allow-origin"] == origin
        r = browser.post(
            "/auth/dev-login",
            content=b"x" * (2 * 1024 * 1024),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 413
        assert r.headers["access-control-allow-origin"] == origin
