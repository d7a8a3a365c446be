"""WS-CLEAN-1: a disconnect removes the socket from the registry and ends the subscription."""

from __future__ import annotations

from tests.live import LiveServer, wait_until
from tests.websocket.conftest import SignedIn


def test_ws_clean_1_disconnect_cleans_registry(live: LiveServer, user: SignedIn) -> None:
    """WS-CLEAN-1: one entry while connected; none after the client disconnects."""
    with live.ws(user.token):
        assert len(live.manager._connections[user.user_id]) == 1
        assert user.user_id in live.manager.following._subscriptions
    assert wait_until(lambda: user.user_id not in live.manager._connections)
    assert wait_until(lambda: user.user_id not in live.manager.following._subscriptions)


def test_ws_clean_1_actor_side_subscription_ends(live: LiveServer, user: SignedIn) -> None:
    """WS-CLEAN-1: the session actor also forgets the edge's stream once the last tab closes."""
    import ray

    from actors.session_ray import get_session_actor

    actor = get_session_actor(user.user_id, live.settings)
    with live.ws(user.token), live.ws(user.token):
        # The edge subscribes after the accept, in the background: one stream per edge.
        assert wait_until(lambda: ray.get(actor.check_health.remote())["subscribers"] == 1)
        assert ray.get(actor.check_health.remote())["edges"] == [live.manager.hub_name]
    assert wait_until(lambda: ray.get(actor.check_health.remote())["subscribers"] == 0)
