"""WS-ERR-2 and WS-UNK-1: server-side close with cleanup; unknown event types forwarded."""

from __future__ import annotations

import ray

from actors.session_ray import get_session_actor
from tests.live import LiveServer, WSHelper
from tests.websocket.conftest import SignedIn


def test_ws_err_2_server_close_reaches_client_and_cleans_up(
    live: LiveServer, user: SignedIn, ws_helper: WSHelper
) -> None:
    """WS-ERR-2: the server closes a socket; the client gets the close frame; state is gone."""
    assert live.manager.count(user.user_id) == 1
    live.call(live.manager.close_user(user.user_id, 1000, "bye"))
    assert ws_helper.close_code() == 1000
    assert live.manager.count(user.user_id) == 0
    assert user.user_id not in live.manager._connections
    assert user.user_id not in live.manager.following._subscriptions


def test_ws_unk_1_unknown_type_sent_through_the_session_actor(
    live: LiveServer, user: SignedIn, ws_helper: WSHelper
) -> None:
    """WS-UNK-1: an unknown event type published by the actor reaches the client untouched."""
    actor = get_session_actor(user.user_id, live.settings)
    ray.get(actor.publish.remote({"type": "unknown_type", "data": "test"}))
    assert ws_helper.receive_json() == {"type": "unknown_type", "data": "test"}
    # and the socket still carries the actor's events afterwards
    ray.get(
        actor.publish.remote({"type": "query_status", "conversation_id": "c", "phase": "queued"})
    )
    assert ws_helper.receive_json()["phase"] == "queued"


def test_oversized_client_frame_closes_1009(live: LiveServer, user: SignedIn) -> None:
    """Frames are bounded: a client frame over the limit closes the socket."""
    with live.ws(user.token) as ws:
        ws.ws.send("x" * (live.settings.ws_max_frame_bytes + 10))
        assert ws.close_code() == 1009
