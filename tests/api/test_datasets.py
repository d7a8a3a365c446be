"""Dataset routes over the live edge: admission rules, rename, refresh, delete, SSRF default."""

from __future__ import annotations

import io
import logging
import time
import uuid
from functools import partial
from typing import Any

import httpx
import polars as pl
import pytest

from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.live import LiveServer


def csv_bytes(n: int = 4) -> bytes:
    return (
        pl.DataFrame({"id": list(range(n)), "name": [f"n{i}" for i in range(n)]})
        .write_csv()
        .encode()
    )


def parquet_bytes(rows: int) -> bytes:
    buf = io.BytesIO()
    pl.DataFrame({"x": list(range(rows))}).write_parquet(buf)
    return buf.getvalue()


def signed_in(live: LiveServer) -> tuple[httpx.Client, str]:
    _token, _uid, client = live.login(f"ds-{uuid.uuid4().hex[:8]}@example.com")
    conv = client.post("/conversations").json()["id"]
    return client, conv


def wait_status(
    client: httpx.Client, conv: str, dataset_id: str, timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for d in client.get(f"/conversations/{conv}").json()["datasets"]:
            if d["id"] == dataset_id and d["status"] != "loading":
                return d  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError("dataset still loading")


def test_names_limit_and_duplicates(live: LiveServer, data_server: FakeDataServer) -> None:
    client, conv = signed_in(live)
    urls = [data_server.add(f"/f{i}.csv", csv_bytes()) for i in range(6)]
    ids = []
    for url in urls[:5]:
        r = client.post(f"/conversations/{conv}/datasets", json={"url": url})
        assert r.status_code == 201, r.text
        ids.append(r.json()["dataset_id"])
    names = [wait_status(client, conv, i)["name"] for i in ids]
    assert names == ["table1", "table2", "table3", "table4", "table5"]
    r = client.post(f"/conversations/{conv}/datasets", json={"url": urls[5]})
    assert r.status_code == 400 and r.json()["error"] == "Maximum 5 datasets reached"
    r = client.post(f"/conversations/{conv}/datasets", json={"url": urls[0]})
    assert r.status_code == 400 and r.json()["error"] == "This dataset is already loaded"
    # the same URL in another conversation is fine
    other = client.post("/conversations").json()["id"]
    assert client.post(f"/conversations/{other}/datasets", json={"url": urls[0]}).status_code == 201
    assert len(client.get(f"/conversations/{conv}").json()["datasets"]) == 5


def test_invalid_url_format(live: LiveServer) -> None:
    client, conv = signed_in(live)
    for bad in ["not a url", "ftp://example.com/x.csv", "file:///etc/passwd", "", "http://"]:
        r = client.post(f"/conversations/{conv}/datasets", json={"url": bad})
        assert r.status_code == 400, bad
        assert r.json()["error"] == "Invalid URL format"
    assert client.get(f"/conversations/{conv}").json()["datasets"] == []


def test_rename_rules(live: LiveServer, data_server: FakeDataServer) -> None:
    client, conv = signed_in(live)
    a = client.post(
        f"/conversations/{conv}/datasets", json={"url": data_server.add("/a.csv", csv_bytes())}
    ).json()
    b = client.post(
        f"/conversations/{conv}/datasets", json={"url": data_server.add("/b.csv", csv_bytes())}
    ).json()
    wait_status(client, conv, a["dataset_id"])
    path = f"/conversations/{conv}/datasets/{a['dataset_id']}"
    r = client.patch(path, json={"table_name": "sales"})
    assert r.status_code == 200 and r.json()["name"] == "sales"
    r = client.patch(path, json={"tableName": "sales_2025"})  # older clients
    assert r.status_code == 200 and r.json()["name"] == "sales_2025"
    for bad in ["", "1abc", "has space", "x" * 51, "drop;", "select", "SELECT", 7, None]:
        r = client.patch(path, json={"table_name": bad})
        assert r.status_code == 400, bad
        assert "error" in r.json()
    r = client.patch(path, json={"table_name": "TABLE2"})  # b is table2: unique, case-insensitive
    assert r.status_code == 400
    assert b["dataset_id"]
    names = {d["name"] for d in client.get(f"/conversations/{conv}").json()["datasets"]}
    assert names == {"sales_2025", "table2"}


def test_refresh_and_delete(live: LiveServer, data_server: FakeDataServer) -> None:
    client, conv = signed_in(live)
    url = data_server.add("/grow.parquet", parquet_bytes(10))
    d = client.post(f"/conversations/{conv}/datasets", json={"url": url}).json()
    assert wait_status(client, conv, d["dataset_id"])["row_count"] == 10
    data_server.add("/grow.parquet", parquet_bytes(25))
    r = client.post(f"/conversations/{conv}/datasets/{d['dataset_id']}/refresh")
    assert r.status_code == 200, r.text
    assert r.json()["row_count"] == 25 and r.json()["status"] == "ready"
    data_server.files.pop("/grow.parquet")  # now 404
    r = client.post(f"/conversations/{conv}/datasets/{d['dataset_id']}/refresh")
    assert r.status_code == 502 and "error" in r.json()
    assert wait_status(client, conv, d["dataset_id"])["row_count"] == 25  # unchanged
    r = client.delete(f"/conversations/{conv}/datasets/{d['dataset_id']}")
    assert r.json() == {"success": True}
    assert client.get(f"/conversations/{conv}").json()["datasets"] == []
    r = client.delete(f"/conversations/{conv}/datasets/{d['dataset_id']}")
    assert r.status_code == 404


def test_private_hosts_refused_by_default(
    ray_session: None, settings: Settings, data_server: FakeDataServer
) -> None:
    """With DATASET_ALLOW_PRIVATE_HOSTS off, a loopback URL ends in a clear dataset error."""
    server = LiveServer(settings.model_copy(update={"dataset_allow_private_hosts": False})).start()
    try:
        client, conv = signed_in(server)
        url = data_server.add("/secret.csv", csv_bytes())
        d = client.post(f"/conversations/{conv}/datasets", json={"url": url}).json()
        final = wait_status(client, conv, d["dataset_id"])
        assert final["status"] == "error"
        assert "private or internal" in final["error"]
        assert data_server.requests["/secret.csv"] == 0  # never fetched
    finally:
        server.stop()


def test_bundled_sample_loads_with_default_settings(ray_session: None, settings: Settings) -> None:
    """The bundled sample, at the app's own URL, loads and queries even with private hosts off."""
    server = LiveServer(settings.model_copy(update={"dataset_allow_private_hosts": False})).start()
    try:
        assert server.client().get("/samples/sales.parquet").status_code == 200
        client, conv = signed_in(server)
        url = f"{server.url}/samples/sales.parquet"
        d = client.post(f"/conversations/{conv}/datasets", json={"url": url}).json()
        final = wait_status(client, conv, d["dataset_id"])
        assert final["status"] == "ready", final
        assert final["row_count"] == 288 and final["column_count"] == 8
        r = client.post(
            f"/conversations/{conv}/query",
            json={
                "sql": "SELECT region, SUM(units_sold) AS units FROM table1 "
                "GROUP BY region ORDER BY region"
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["columns"] == ["region", "units"]
        assert len(r.json()["rows"]) >= 2
    finally:
        server.stop()


def test_load_interrupted_by_a_crash_ends_in_error(live: LiveServer) -> None:
    """A row left 'loading' by a dead actor is closed as an error when the next actor starts."""
    from chatdf.db import Database, Dataset

    _token, _uid, client = live.login(f"crash-{uuid.uuid4().hex[:8]}@example.com")
    conv = client.post("/conversations").json()["id"]
    db = Database(live.settings.resolved_database_url)
    with db.session() as s:
        row = Dataset(conversation_id=conv, url="http://example.com/x.csv", name="table1")
        s.add(row)
        s.flush()
        dataset_id = row.id
    assert client.get("/usage").status_code == 200  # a call starts the actor (a socket does not)
    final = wait_status(client, conv, dataset_id)
    assert final["status"] == "error"
    assert "interrupted" in final["error"]
    client.close()


def test_an_actor_dying_under_a_call_twice_is_503_in_the_error_body(
    live: LiveServer, data_server: FakeDataServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The edge re-creates a dead session actor once; a second death is a 503, never a 500."""
    import threading

    import ray

    from actors.session_ray import get_session_actor
    from tests.live import wait_until

    token, user_id, client = live.login(f"ds-{uuid.uuid4().hex[:8]}@example.com")
    conv = client.post("/conversations").json()["id"]
    url = data_server.add("/slow.parquet", parquet_bytes(100))
    dataset = client.post(f"/conversations/{conv}/datasets", json={"url": url}).json()
    assert wait_status(client, conv, dataset["dataset_id"])["status"] == "ready"
    data_server.files["/slow.parquet"].stall = True  # the query's download now hangs
    replies: list[httpx.Response] = []
    query = threading.Thread(
        target=lambda: replies.append(
            client.post(f"/conversations/{conv}/query", json={"sql": "SELECT * FROM table1"})
        )
    )
    before = data_server.requests["/slow.parquet"]
    query.start()

    def slow_reads_reach(n: int) -> bool:
        return data_server.requests["/slow.parquet"] >= n

    for attempt in (1, 2):  # the first call, then the edge's one retry on a fresh actor
        assert wait_until(partial(slow_reads_reach, before + attempt))
        ray.kill(get_session_actor(user_id, live.settings), no_restart=True)
    query.join(60)
    assert replies and replies[0].status_code == 503
    assert replies[0].json() == {
        "error": "The session is restarting; try again in a moment",
        "details": None,
    }
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback logged
    assert "session actor unavailable" in caplog.text
    client.close()


def test_a_table_cannot_be_named_like_a_table_function(
    live: LiveServer, data_server: FakeDataServer
) -> None:
    """The SQL guard refuses read_*/scan_* names, so a table may not take one."""
    client, conv = signed_in(live)
    url = data_server.add("/fn.csv", csv_bytes())
    dataset = client.post(f"/conversations/{conv}/datasets", json={"url": url}).json()
    path = f"/conversations/{conv}/datasets/{dataset['dataset_id']}"
    for name in ["read_csv", "SCAN_parquet"]:
        r = client.patch(path, json={"table_name": name})
        assert r.status_code == 400
        assert r.json()["error"] == f"'{name}' is reserved for SQL table functions (read_*, scan_*)"


def test_deleting_a_dataset_cancels_its_running_load(
    live: LiveServer, data_server: FakeDataServer
) -> None:
    """The load's download hangs; DELETE ends it: the load worker goes away, and no late
    dataset_loaded or dataset_error event arrives for the deleted dataset."""
    from pathlib import Path

    from tests.live import wait_until

    def loads_running() -> int:
        titles = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                titles.append(cmdline.read_bytes())
            except OSError:
                continue
        return sum(1 for title in titles if title.startswith(b"ray::load_dataset"))

    token, _uid, client = live.login(f"ds-{uuid.uuid4().hex[:8]}@example.com")
    conv = client.post("/conversations").json()["id"]
    url = data_server.add("/hang.csv", csv_bytes(), stall=True)
    with live.ws(token) as ws:
        dataset = client.post(f"/conversations/{conv}/datasets", json={"url": url}).json()
        assert ws.receive_json()["type"] == "dataset_loading"
        assert wait_until(lambda: data_server.requests["/hang.csv"] >= 1 and loads_running() == 1)
        path = f"/conversations/{conv}/datasets/{dataset['dataset_id']}"
        assert client.delete(path).json() == {"success": True}
        assert wait_until(lambda: loads_running() == 0)
        assert client.get(f"/conversations/{conv}").json()["datasets"] == []
        # The next event is the next dataset's, not a late one for the deleted dataset.
        other = data_server.add("/next.csv", csv_bytes())
        client.post(f"/conversations/{conv}/datasets", json={"url": other})
        event = ws.receive_json()
        assert (event["type"], event["url"]) == ("dataset_loading", other)
    client.close()


def test_one_user_cannot_hold_every_load_slot(
    live: LiveServer, data_server: FakeDataServer
) -> None:
    """Slow ("slowloris") dataset servers: past MAX_CONCURRENT_LOADS_PER_USER running loads, a
    new one is refused (429) instead of taking another slot for minutes."""
    client, conv = signed_in(live)
    cap = live.settings.max_concurrent_loads_per_user
    for i in range(cap):
        url = data_server.add(f"/slow-{i}.csv", csv_bytes(), stall=True)
        assert client.post(f"/conversations/{conv}/datasets", json={"url": url}).status_code == 201
    other = client.post("/conversations").json()["id"]
    r = client.post(f"/conversations/{other}/datasets", json={"url": data_server.add("/x.csv")})
    assert r.status_code == 429
    assert r.json()["error"] == f"{cap} datasets are loading already; wait for one to finish"
    client.delete(f"/conversations/{conv}")  # cancels the stalled loads
