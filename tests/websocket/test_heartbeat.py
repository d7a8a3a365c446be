"""WS-HB-1: JSON pings every HEARTBEAT_INTERVAL; silent sockets are closed and cleaned up."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from chatdf.settings import Settings
from tests.live import LiveServer
from tests.rawws import RawWebSocket


@pytest.fixture
def fast_live(ray_session: None, settings: Settings) -> Iterator[LiveServer]:
    """A server whose heartbeat interval and timeout are short (settings, not monkeypatching)."""
    fast = settings.model_copy(update={"heartbeat_interval": 0.2, "heartbeat_timeout": 1.0})
    server = LiveServer(fast).start()
    yield server
    server.stop()


def test_ws_hb_1_ping_pong_keeps_the_connection_alive(fast_live: LiveServer) -> None:
    """WS-HB-1: the server pings; a client that answers pong stays connected past the timeout."""
    token, user_id, client = fast_live.login(f"hb-{uuid.uuid4().hex[:8]}@example.com")
    with fast_live.ws(token) as ws:
        started = time.monotonic()
        pings = 0
        while time.monotonic() - started < 2.0:  # twice the heartbeat timeout
            frame = ws.receive_json(timeout=2)
            assert frame == {"type": "ping"}
            pings += 1
            ws.ws.send('{"type": "pong"}')
        assert pings >= 3
        assert fast_live.manager.count(user_id) == 1
    client.close()


def test_protocol_pongs_alone_keep_the_connection_alive(fast_live: LiveServer) -> None:
    """A browser never sends a JSON pong but answers protocol-level pings by itself: that is
    liveness too. This client (like a browser) answers pings and sends nothing else."""
    token, user_id, client = fast_live.login(f"hb-{uuid.uuid4().hex[:8]}@example.com")
    with fast_live.ws(token, ping_interval=None) as ws:  # it sends no pings of its own either
        started = time.monotonic()
        pings = 0
        while time.monotonic() - started < 3 * fast_live.settings.heartbeat_timeout:
            assert ws.receive_json(timeout=2) == {"type": "ping"}  # JSON pings still come
            pings += 1
        assert pings >= 5
        assert fast_live.manager.count(user_id) == 1
    client.close()


def test_ws_hb_1_stale_connection_is_closed_and_cleaned(fast_live: LiveServer) -> None:
    """WS-HB-1 (stale): a client that sends nothing, not even a protocol-level pong, for
    HEARTBEAT_TIMEOUT is closed with 4000, then forgotten."""
    token, user_id, client = fast_live.login(f"hb-{uuid.uuid4().hex[:8]}@example.com")
    raw = RawWebSocket(f"{fast_live.ws_url}?token={token}")
    try:
        assert raw.wait_closed(timeout=5) == 4000
    finally:
        raw.close()
    deadline = time.monotonic() + 5
    while fast_live.manager.count(user_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fast_live.manager.count(user_id) == 0
    assert user_id not in fast_live.manager.following._subscriptions
    client.close()
