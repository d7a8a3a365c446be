"""WS-RECON-1: a reconnect re-authenticates and re-registers, and nothing is replayed."""

from __future__ import annotations

from tests.live import LiveServer
from tests.websocket.conftest import SignedIn


def test_ws_recon_1_reconnect_registers_again_without_replay(
    live: LiveServer, user: SignedIn
) -> None:
    """WS-RECON-1: state seeded, disconnect, reconnect: no state frames; REST has the state."""
    conv = user.client.post("/conversations", json={"title": "kept"}).json()
    with live.ws(user.token) as ws:
        live.call(live.manager.send_to_user(user.user_id, {"type": "unknown_type", "n": 1}))
        assert ws.receive_json()["n"] == 1
    with live.ws(user.token) as ws:
        assert live.manager.count(user.user_id) == 1
        ws.assert_no_message(0.5)  # nothing replayed
        live.call(live.manager.send_to_user(user.user_id, {"type": "unknown_type", "n": 2}))
        assert ws.receive_json()["n"] == 2  # registered again: new events arrive
    detail = user.client.get(f"/conversations/{conv['id']}").json()
    assert detail["title"] == "kept"
