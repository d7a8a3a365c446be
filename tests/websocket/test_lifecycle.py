"""The session actor's life cycle seen from sockets: accepted with no actor, nothing lost between
accept and subscription, nothing older sent, and an idle actor that exits with tabs open and is
woken again (through either edge) by the next message."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import ray

from actors.session_ray import get_session_actor
from chatdf.settings import Settings
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer, WSHelper, session_alive, wait_until


@contextmanager
def edge_paused(live: LiveServer) -> Iterator[None]:
    """Blocks the edge's event loop: it can neither take a wake-up nor subscribe meanwhile."""
    assert live.loop is not None
    blocked, release = threading.Event(), threading.Event()

    def hold() -> None:
        blocked.set()
        release.wait(30)

    live.loop.call_soon_threadsafe(hold)
    assert blocked.wait(10)
    try:
        yield
    finally:
        release.set()


def test_a_burst_of_sockets_is_accepted_while_no_actor_exists(live: LiveServer) -> None:
    """The handshake waits on no actor: 20 users connect at once and none gets an actor."""
    users = [live.login(f"burst-{i}-{uuid.uuid4().hex[:6]}@ex.com") for i in range(20)]
    with ThreadPoolExecutor(20) as pool:
        sockets = list(pool.map(lambda u: live.ws(u[0]), users))
    try:
        for _token, user_id, _client in users:
            assert live.manager.count(user_id) == 1
            assert not session_alive(user_id, live.settings)
    finally:
        for ws in sockets:
            ws.ws.close()
        for _token, _user_id, client in users:
            client.close()


def test_an_event_published_between_accept_and_subscription_reaches_the_socket(
    live: LiveServer,
) -> None:
    """The actor starts and publishes while the edge cannot subscribe yet: the event waits in
    the actor's buffer and reaches the socket once the edge subscribes."""
    token, user_id, client = live.login(f"gap-{uuid.uuid4().hex[:8]}@ex.com")
    with live.ws(token) as ws:
        assert not session_alive(user_id, live.settings)
        with edge_paused(live):
            actor = get_session_actor(user_id, live.settings)
            ray.get(actor.publish.remote({"type": "unknown_type", "n": "gap"}))
            assert ray.get(actor.check_health.remote())["subscribers"] == 0
        assert ws.receive_json() == {"type": "unknown_type", "n": "gap"}
    client.close()


def test_events_from_before_the_accept_are_never_sent(live: LiveServer) -> None:
    """WS-RECON-1/2 hold with the buffer: a socket gets what came after its accept only."""
    token, user_id, client = live.login(f"older-{uuid.uuid4().hex[:8]}@ex.com")
    actor = get_session_actor(user_id, live.settings)
    ray.get(actor.publish.remote({"type": "unknown_type", "n": "before"}))
    with live.ws(token) as first:
        with edge_paused(live):
            ray.get(actor.publish.remote({"type": "unknown_type", "n": "after"}))
        assert first.receive_json()["n"] == "after"
        with live.ws(token) as second:  # a second tab of an edge already subscribed
            ray.get(actor.publish.remote({"type": "unknown_type", "n": "later"}))
            assert second.receive_json()["n"] == "later"
            assert first.receive_json()["n"] == "later"
    client.close()


def turn_reaches_every_tab(
    fake_gemini: FakeGemini, post: object, tabs: list[WSHelper], text: str
) -> None:
    fake_gemini.script_text(text, chunks=3, usage=(5, 5))
    r = post()  # type: ignore[operator]
    assert r.status_code == 202, r.text
    for tab in tabs:
        frames = tab.receive_until("chat_complete")
        assert (frames[0]["type"], frames[0].get("phase")) == ("query_status", "queued")
        assert "".join(f["token"] for f in frames if f["type"] == "chat_token") == text


def test_an_idle_actor_exits_with_tabs_open_and_the_next_message_wakes_every_edge(
    ray_session: None, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """Tabs on two edges; the actor exits once idle while they stay open; a message through
    either edge starts it again and every tab gets the whole turn, from its first event."""
    quick = gemini_settings.model_copy(
        update={"actor_idle_timeout_s": 1.5, "actor_reap_interval_s": 0.1}
    )
    edge_a, edge_b = LiveServer(quick).start(), LiveServer(quick).start()
    try:
        token, user_id, client_a = edge_a.login(f"wake-{uuid.uuid4().hex[:8]}@ex.com")
        client_b = edge_b.client(token)
        conv = client_a.post("/conversations").json()["id"]
        path = f"/conversations/{conv}/messages"
        with edge_a.ws(token) as a1, edge_a.ws(token) as a2, edge_b.ws(token) as b1:
            tabs = [a1, a2, b1]
            assert not session_alive(user_id, quick)
            turn_reaches_every_tab(
                fake_gemini, lambda: client_b.post(path, json={"content": "1"}), tabs, "via b"
            )
            assert wait_until(lambda: not session_alive(user_id, quick))  # idle: gone, tabs open
            assert (edge_a.manager.count(user_id), edge_b.manager.count(user_id)) == (2, 1)
            turn_reaches_every_tab(
                fake_gemini, lambda: client_a.post(path, json={"content": "2"}), tabs, "via a"
            )
            assert wait_until(lambda: not session_alive(user_id, quick))
            turn_reaches_every_tab(
                fake_gemini, lambda: client_b.post(path, json={"content": "3"}), tabs, "b again"
            )
        client_a.close()
        client_b.close()
    finally:
        edge_a.stop()
        edge_b.stop()
