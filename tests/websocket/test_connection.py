"""WS-CONN-1..4: who may open /ws, and how the server refuses the rest (close 4001)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import httpx
import ray
from sqlalchemy import update
from websockets.sync.client import connect

from actors.session_ray import get_session_actor
from chatdf.db import Database, UserSession, utcnow
from chatdf.store import hash_secret
from tests.fakes.fake_data_server import FakeDataServer
from tests.live import LiveServer, WSHelper, wait_until
from tests.websocket.conftest import JoinedEdge, SignedIn


def _load(client: httpx.Client, server: FakeDataServer) -> str:
    """Starts a real dataset load through the user's session actor; returns the dataset id."""
    conv = client.post("/conversations").json()["id"]
    url = server.add(f"/{uuid.uuid4().hex}.csv", b"a\n1\n")
    dataset_id: str = client.post(f"/conversations/{conv}/datasets", json={"url": url}).json()[
        "dataset_id"
    ]
    return dataset_id


def test_ws_conn_1_valid_token_connects_and_is_two_way(
    live: LiveServer, user: SignedIn, ws_helper: WSHelper, data_server: FakeDataServer
) -> None:
    """WS-CONN-1: a valid session token is accepted; frames flow both ways (the server's are
    the session actor's events of a real load)."""
    assert live.manager.count(user.user_id) == 1
    ws_helper.ws.send('{"type": "pong"}')  # client -> server is accepted and ignored
    dataset_id = _load(user.client, data_server)
    loading = ws_helper.receive_event()
    assert (loading["type"], loading["dataset_id"]) == ("dataset_loading", dataset_id)


def test_ws_conn_2_unknown_token_closes_4001(live: LiveServer) -> None:
    """WS-CONN-2: a token that is no session closes with 4001."""
    with live.ws("00000000-0000-0000-0000-000000000000") as ws:
        assert ws.close_code() == 4001


def test_ws_conn_3_expired_session_closes_4001(live: LiveServer, user: SignedIn) -> None:
    """WS-CONN-3: an expired session closes with 4001."""
    db = Database(live.settings.resolved_database_url)
    with db.session() as s:
        s.execute(
            update(UserSession)
            .where(UserSession.token_hash == hash_secret(user.token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    with live.ws(user.token) as ws:
        assert ws.close_code() == 4001
    assert live.manager.count(user.user_id) == 0


def test_ws_conn_4_missing_token_closes_4001(live: LiveServer) -> None:
    """WS-CONN-4: no token at all closes with 4001 (accepted first, so it is not an HTTP 403)."""
    with live.ws(None) as ws:
        assert ws.close_code() == 4001


def test_cookie_auth_needs_allowed_origin(
    live: LiveServer, user: SignedIn, data_server: FakeDataServer
) -> None:
    """Cookie-authenticated sockets must come from an allowed Origin (CSWSH guard)."""
    cookie = {"Cookie": f"session_token={user.token}"}
    with live.ws(None, additional_headers=cookie, origin="http://evil.example") as ws:
        assert ws.close_code() == 4001
    allowed = live.settings.allowed_origins[0]
    with live.ws(None, additional_headers=cookie, origin=allowed) as ws:
        dataset_id = _load(user.client, data_server)
        assert ws.receive_until("dataset_loaded")[-1]["dataset_id"] == dataset_id


def test_two_tabs_of_one_user_both_receive_an_actor_event(live: LiveServer, user: SignedIn) -> None:
    """Several sockets of one user (tabs) each get every event published by the actor."""
    with live.ws(user.token) as tab1, live.ws(user.token) as tab2:
        assert live.manager.count(user.user_id) == 2
        actor = get_session_actor(user.user_id, live.settings)
        ray.get(
            actor.publish.remote(
                {"type": "query_status", "conversation_id": "c", "phase": "queued"}
            )
        )
        assert tab1.receive_event()["phase"] == "queued"
        assert tab2.receive_event()["phase"] == "queued"


def test_other_users_do_not_receive_my_events(
    live: LiveServer, user: SignedIn, data_server: FakeDataServer
) -> None:
    other_token, _other_id, other_client = live.login("someone-else@example.com")
    with live.ws(user.token) as mine, live.ws(other_token) as theirs:
        dataset_id = _load(user.client, data_server)
        assert mine.receive_until("dataset_loaded")[-1]["dataset_id"] == dataset_id
        theirs.assert_no_message(0.3)
    other_client.close()


def test_token_never_logged(joined_edge: JoinedEdge, live: LiveServer, user: SignedIn) -> None:
    """A running `chatdf serve` (its own logging set-up, uvicorn's access lines, INFO) writes no
    session token to its output, though the socket carried it in its query string."""
    ws_url = joined_edge.url.replace("http://", "ws://") + f"/ws?token={user.token}"
    with connect(ws_url, open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=10)) == {"type": "ping"}  # accepted and registered
    me = httpx.get(f"{joined_edge.url}/auth/me", params={"token": user.token})
    assert me.status_code == 401  # a token in a URL is no credential, but still a secret
    assert wait_until(lambda: "/auth/me" in joined_edge.log.read_text(), limit_s=10)
    text = joined_edge.log.read_text()
    assert "WebSocket /ws?token=[redacted]" in text, text
    assert user.token not in text


def test_two_tabs_connecting_at_once_both_get_the_first_event(
    live: LiveServer, user: SignedIn
) -> None:
    """A tab that opens while the first tab's subscription is still starting is not left out."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        tabs = list(pool.map(lambda _: live.ws(user.token), range(2)))
    try:
        actor = get_session_actor(user.user_id, live.settings)
        ray.get(actor.publish.remote({"type": "unknown_type", "n": 1}))
        ray.get(actor.publish.remote({"type": "unknown_type", "n": 2}))
        for tab in tabs:
            assert tab.receive_json()["n"] == 1
            assert tab.receive_json()["n"] == 2
    finally:
        for tab in tabs:
            tab.ws.close()
