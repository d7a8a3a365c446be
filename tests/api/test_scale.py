"""Several edges on one Ray, a restarted session actor, and SQL sandbox refusals over REST."""

from __future__ import annotations

import time
import uuid

import polars as pl
import ray

from actors.session_ray import get_session_actor
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer, session_alive, wait_until


def test_two_edges_share_one_actor_and_budget(
    ray_session: None, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """Two edge processes' worth of servers: a user's tabs on each get every event; one budget."""
    edge_a = LiveServer(gemini_settings).start()
    edge_b = LiveServer(gemini_settings).start()
    try:
        token, user_id, client_a = edge_a.login(f"edges-{uuid.uuid4().hex[:8]}@ex.com")
        client_b = edge_b.client(token)
        conv = client_a.post("/conversations").json()["id"]
        fake_gemini.script_text("seen everywhere", chunks=2, usage=(30, 12))
        with edge_a.ws(token) as ws_a, edge_b.ws(token) as ws_b:
            r = client_b.post(f"/conversations/{conv}/messages", json={"content": "hi"})
            assert r.status_code == 202
            done_a = ws_a.receive_until("chat_complete")[-1]
            done_b = ws_b.receive_until("chat_complete")[-1]
        assert done_a == done_b
        assert client_a.get("/usage").json()["tokens_used"] == 42
        assert client_b.get("/usage").json()["tokens_used"] == 42
        client_a.close()
        client_b.close()
    finally:
        edge_a.stop()
        edge_b.stop()


def test_restarted_actor_recovers_usage_from_database(
    ray_session: None, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """Kill the user's actor: the next one reloads the exact figure from token_usage."""
    server = LiveServer(gemini_settings).start()
    try:
        token, user_id, client = server.login(f"restart-{uuid.uuid4().hex[:8]}@ex.com")
        conv = client.post("/conversations").json()["id"]
        fake_gemini.script_text("costs tokens", chunks=1, usage=(100, 23))
        with server.ws(token) as ws:
            client.post(f"/conversations/{conv}/messages", json={"content": "hi"})
            ws.receive_until("chat_complete")
        before = client.get("/usage").json()
        assert before["tokens_used"] == 123
        ray.kill(get_session_actor(user_id, server.settings), no_restart=True)
        assert wait_until(lambda: not session_alive(user_id, server.settings))
        after = client.get("/usage").json()
        assert after["tokens_used"] == 123
        assert after["remaining"] == before["remaining"]
        client.close()
    finally:
        server.stop()


def test_sql_sandbox_refusals_over_rest(live: LiveServer, data_server: FakeDataServer) -> None:
    """Escapes are 400 with a clear error; another conversation's table is unknown here."""
    _t, _u, client = live.login(f"sql-{uuid.uuid4().hex[:8]}@ex.com")
    mine = client.post("/conversations").json()["id"]
    other = client.post("/conversations").json()["id"]
    url = data_server.add("/t.csv", pl.DataFrame({"a": [1, 2, 3]}).write_csv().encode())
    client.post(f"/conversations/{other}/datasets", json={"url": url})
    deadline = time.monotonic() + 20
    while client.get(f"/conversations/{other}").json()["datasets"][0]["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for sql in [
        "SELECT * FROM read_csv('/etc/passwd')",
        "COPY table1 TO '/tmp/x.csv'",
        "CREATE TABLE t AS SELECT 1",
        "DROP TABLE table1",
        "SELECT 1; SELECT 2",
        "SELECT * FROM table1",  # table1 belongs to the other conversation
    ]:
        r = client.post(f"/conversations/{mine}/query", json={"sql": sql})
        assert r.status_code == 400, (sql, r.text)
        assert r.json()["error"], sql
    r = client.post(f"/conversations/{other}/query", json={"sql": "SELECT SUM(a) AS s FROM table1"})
    assert r.status_code == 200 and r.json()["rows"] == [[6]]
    r = client.post(f"/conversations/{other}/query", json={"sql": "SELECT nope FROM table1"})
    assert r.status_code == 400 and "nope" in r.json()["error"] and "a" in r.json()["error"]
    client.close()
