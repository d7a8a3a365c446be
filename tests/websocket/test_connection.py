"""WS-CONN-1..4: who may open /ws, and how the server refuses the rest (close 4001)."""

from __future__ import annotations

from datetime import timedelta

import ray
from sqlalchemy import update

from actors.session import get_session_actor
from chatdf.db import Database, UserSession, utcnow
from chatdf.store import hash_secret
from tests.live import LiveServer, WSHelper
from tests.websocket.conftest import SignedIn


def test_ws_conn_1_valid_token_connects_and_is_two_way(
    live: LiveServer, user: SignedIn, ws_helper: WSHelper
) -> None:
    """WS-CONN-1: a valid session token is accepted; frames flow both ways."""
    assert live.manager.count(user.user_id) == 1
    ws_helper.ws.send('{"type": "pong"}')  # client -> server is accepted and ignored
    sent = live.call(live.manager.send_to_user(user.user_id, {"type": "ping"}))
    assert sent == 1
    assert ws_helper.receive_json() == {"type": "ping"}


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


def test_cookie_auth_needs_allowed_origin(live: LiveServer, user: SignedIn) -> None:
    """Cookie-authenticated sockets must come from an allowed Origin (CSWSH guard)."""
    cookie = {"Cookie": f"session_token={user.token}"}
    with live.ws(None, additional_headers=cookie, origin="http://evil.example") as ws:
        assert ws.close_code() == 4001
    allowed = live.settings.allowed_origins[0]
    with live.ws(None, additional_headers=cookie, origin=allowed) as ws:
        live.call(live.manager.send_to_user(user.user_id, {"type": "ping"}))
        assert ws.receive_json()["type"] == "ping"


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


def test_other_users_do_not_receive_my_events(live: LiveServer, user: SignedIn) -> None:
    other_token, _other_id, other_client = live.login("someone-else@example.com")
    with live.ws(user.token) as mine, live.ws(other_token) as theirs:
        live.call(live.manager.send_to_user(user.user_id, {"type": "ping"}))
        assert mine.receive_json()["type"] == "ping"
        theirs.assert_no_message(0.3)
    other_client.close()


def test_token_never_logged(live: LiveServer, user: SignedIn, caplog: object) -> None:
    """The redaction filter strips session tokens from log lines (uvicorn logs query strings)."""
    import logging

    from api.cli import RedactTokens

    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket /ws?token=%s" [accepted]',
        ("127.0.0.1", user.token),
        None,
    )
    assert RedactTokens().filter(record)
    assert user.token not in record.getMessage()
    assert "token=[redacted]" in record.getMessage()


def test_two_tabs_connecting_at_once_both_get_the_first_event(
    live: LiveServer, user: SignedIn
) -> None:
    """A tab that opens while the first tab's subscription is still starting is not left out."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        tabs = list(pool.map(lambda _: live.ws(user.token), range(2)))
    try:
        live.call(live.manager.send_to_user(user.user_id, {"type": "unknown_type", "n": 1}))
        actor = get_session_actor(user.user_id, live.settings)
        ray.get(actor.publish.remote({"type": "unknown_type", "n": 2}))
        for tab in tabs:
            assert tab.receive_json()["n"] == 1
            assert tab.receive_json()["n"] == 2
    finally:
        for tab in tabs:
            tab.ws.close()
