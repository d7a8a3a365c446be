"""A socket ends with its sign-in session: at logout at once, at expiry within the interval."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import ray
from sqlalchemy import update

from actors.session_ray import get_session_actor
from chatdf.db import Database, UserSession, utcnow
from chatdf.settings import Settings
from chatdf.store import hash_secret
from tests.live import LiveServer


@pytest.fixture
def quick_checks(ray_session: None, settings: Settings) -> Iterator[LiveServer]:
    """The live edge checking open sockets' sessions every 0.2 s, pings out of the way."""
    server = LiveServer(
        settings.model_copy(update={"session_check_interval_s": 0.2, "heartbeat_interval": 60})
    ).start()
    yield server
    server.stop()


def test_logout_closes_that_sessions_sockets_at_once(live: LiveServer) -> None:
    """Two sessions of one user, a socket each: logging one out closes its socket with 4001,
    the other keeps receiving."""
    first, user_id, client = live.login("logout@example.com")
    second, _uid, other = live.login("logout@example.com")
    with live.ws(first) as ws_first, live.ws(second) as ws_second:
        assert client.post("/auth/logout").json() == {"success": True}
        assert ws_first.close_code() == 4001
        actor = get_session_actor(user_id, live.settings)  # the other keeps the actor's events
        ray.get(actor.publish.remote({"type": "unknown_type"}))
        assert ws_second.receive_json()["type"] == "unknown_type"
    client.close()
    other.close()


def test_an_expired_session_closes_its_sockets(quick_checks: LiveServer) -> None:
    """The session expires while its socket is open (as a logout on another edge would end it):
    the edge's next check closes the socket with 4001."""
    token, _uid, client = quick_checks.login("expiry@example.com")
    with quick_checks.ws(token) as ws:
        db = Database(quick_checks.settings.resolved_database_url)
        with db.session() as s:
            s.execute(
                update(UserSession)
                .where(UserSession.token_hash == hash_secret(token))
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        db.dispose()
        assert ws.close_code(timeout=10) == 4001
    client.close()
