"""WS-MSG-4, WS-MSG-5, WS-MSG-6: dataset progress events over a real socket."""

from __future__ import annotations

import io
from typing import Any

import httpx
import polars as pl

from tests.fakes.fake_data_server import FakeDataServer
from tests.live import LiveServer
from tests.websocket.conftest import SignedIn


def parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pl.DataFrame({"city": ["Oslo", "Lima", "Pune"], "pop": [0.7, 10.0, 3.1]}).write_parquet(buf)
    return buf.getvalue()


def attach_cities(
    live: LiveServer, user: SignedIn, data_server: FakeDataServer, events: int
) -> tuple[str, httpx.Response, list[dict[str, Any]]]:
    """Posts a small Parquet file with a socket open; returns (conversation id, the POST's
    response, the first `events` events on the socket)."""
    url = data_server.add("/cities.parquet", parquet_bytes())
    conv = user.client.post("/conversations").json()["id"]
    with live.ws(user.token) as ws:
        r = user.client.post(f"/conversations/{conv}/datasets", json={"url": url})
        received = [ws.receive_event() for _ in range(events)]
    return conv, r, received


def test_ws_msg_4_dataset_loading_follows_the_post(
    live: LiveServer, user: SignedIn, data_server: FakeDataServer
) -> None:
    """WS-MSG-4: POST answers 201 `loading` at once, and dataset_loading names it and its URL."""
    conv, r, (loading,) = attach_cities(live, user, data_server, events=1)
    assert r.status_code == 201
    assert r.json()["status"] == "loading"
    assert loading == {
        "type": "dataset_loading",
        "conversation_id": conv,
        "dataset_id": r.json()["dataset_id"],
        "url": data_server.url("/cities.parquet"),
        "status": "loading",
    }


def test_ws_msg_5_dataset_loaded_with_name_counts_and_schema(
    live: LiveServer, user: SignedIn, data_server: FakeDataServer
) -> None:
    """WS-MSG-5: dataset_loaded with name, row and column counts, schema and the stored row."""
    conv, r, (loading, loaded) = attach_cities(live, user, data_server, events=2)
    assert (loading["type"], loaded["type"]) == ("dataset_loading", "dataset_loaded")
    assert loaded["dataset_id"] == r.json()["dataset_id"]
    assert loaded["name"] == "table1"
    assert (loaded["row_count"], loaded["column_count"]) == (3, 2)
    assert loaded["schema"] == [{"name": "city", "type": "Text"}, {"name": "pop", "type": "Float"}]
    assert loaded["dataset"]["status"] == "ready"
    stored = user.client.get(f"/conversations/{conv}").json()["datasets"][0]
    assert stored == loaded["dataset"]


def test_ws_msg_6_loading_fails(
    live: LiveServer, user: SignedIn, data_server: FakeDataServer
) -> None:
    """WS-MSG-6: a URL that is no data file ends in dataset_error with a readable sentence."""
    url = data_server.add("/notes.txt", b"just some words, not a table\x00\x01\x02" * 10)
    conv = user.client.post("/conversations").json()
    with live.ws(user.token) as ws:
        r = user.client.post(f"/conversations/{conv['id']}/datasets", json={"url": url})
        dataset_id = r.json()["dataset_id"]
        ws.assert_received_type("dataset_loading")
        failed = ws.assert_received_type("dataset_error")
    assert failed["dataset_id"] == dataset_id
    assert "not a supported data format" in failed["error"]
    stored = user.client.get(f"/conversations/{conv['id']}").json()["datasets"][0]
    assert stored["status"] == "error" and stored["error"] == failed["error"]


def test_ws_msg_6_unreachable_url(live: LiveServer, user: SignedIn) -> None:
    """WS-MSG-6: a host that refuses connections ends in dataset_error too."""
    from tests.live import free_port

    conv = user.client.post("/conversations").json()
    with live.ws(user.token) as ws:
        url = f"http://127.0.0.1:{free_port()}/gone.csv"
        user.client.post(f"/conversations/{conv['id']}/datasets", json={"url": url})
        ws.assert_received_type("dataset_loading")
        failed = ws.assert_received_type("dataset_error")
    assert "reach" in failed["error"].lower()
