"""WS-RECON-1: a reconnect re-authenticates and re-registers, and nothing is replayed."""

from __future__ import annotations

from tests.fakes.fake_data_server import FakeDataServer
from tests.live import LiveServer
from tests.websocket.conftest import SignedIn


def test_ws_recon_1_reconnect_registers_again_without_replay(
    live: LiveServer, user: SignedIn, data_server: FakeDataServer
) -> None:
    """WS-RECON-1: state made through the session actor (a real load), disconnect, reconnect:
    the actor still buffers that load's events, yet none is replayed; the next load's events
    arrive; REST has the state."""
    conv = user.client.post("/conversations", json={"title": "kept"}).json()["id"]
    first = data_server.add("/first.csv", b"a\n1\n")
    with live.ws(user.token) as ws:
        user.client.post(f"/conversations/{conv}/datasets", json={"url": first})
        loaded = ws.receive_until("dataset_loaded")[-1]
    with live.ws(user.token) as ws:
        assert live.manager.count(user.user_id) == 1
        ws.assert_no_message(0.5)  # nothing replayed
        second = data_server.add("/second.csv", b"b\n2\n")
        added = user.client.post(f"/conversations/{conv}/datasets", json={"url": second}).json()
        events = ws.receive_until("dataset_loaded")  # registered again: new events arrive
        assert {e["dataset_id"] for e in events} == {added["dataset_id"]}
        assert events[0]["type"] == "dataset_loading" and events[0]["url"] == second
    detail = user.client.get(f"/conversations/{conv}").json()
    assert detail["title"] == "kept"
    assert {(d["id"], d["status"]) for d in detail["datasets"]} == {
        (loaded["dataset_id"], "ready"),
        (added["dataset_id"], "ready"),
    }
