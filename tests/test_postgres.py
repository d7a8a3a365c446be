"""The cluster path on a real PostgreSQL server: the same edge and actors, DATABASE_URL=postgres."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chatdf.db import Database
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.live import LiveServer
from tests.pg import SERVER_URL, fresh_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the test server, dropped afterwards."""
    if not SERVER_URL:
        pytest.skip("POSTGRES_TEST_URL is not set (scripts/test.sh starts a server when it can)")
    with fresh_database() as url:
        yield url


@pytest.fixture
def pg_live(ray_session: None, settings: Settings, pg_url: str) -> Iterator[LiveServer]:
    server = LiveServer(settings.model_copy(update={"database_url": pg_url})).start()
    yield server
    server.stop()


def test_postgres_auth_conversations_and_events(
    pg_live: LiveServer, data_server: FakeDataServer
) -> None:
    """Schema created on start; login, CRUD, ownership and the actor's event stream all work."""
    token, user_id, client = pg_live.login("pg-user@example.com")
    conv = client.post("/conversations", json={"title": "on postgres"}).json()
    assert client.get("/conversations").json()["conversations"][0]["id"] == conv["id"]
    _t2, _u2, other = pg_live.login("pg-other@example.com")
    assert other.get(f"/conversations/{conv['id']}").status_code == 404
    with pg_live.ws(token) as ws:  # the events come from the session actor (a real load)
        url = data_server.add("/pg.csv", b"a,b\n1,2\n3,4\n")
        added = client.post(f"/conversations/{conv['id']}/datasets", json={"url": url}).json()
        events = ws.receive_until("dataset_loaded")
        assert [e["type"] for e in events] == ["dataset_loading", "dataset_loaded"]
        assert events[-1]["dataset_id"] == added["dataset_id"] and events[-1]["row_count"] == 2
    usage = client.get("/usage").json()
    assert usage["tokens_used"] == 0 and usage["token_limit"] == 5_000_000
    assert client.delete("/conversations").json() == {"success": True, "deleted_count": 1}
    client.close()
    other.close()


def _create(url: str) -> bool:
    db = Database(url)
    db.create_schema()
    db.dispose()
    return True


def test_edges_starting_together_all_create_the_schema(pg_url: str) -> None:
    """Several edges starting at once on an empty PostgreSQL database all come up."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Spawned, as separate edges are: a fork of this process (which holds a Ray driver) can
    # crash in Ray's C++ state when the child collects an inherited Ray object.
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert all(pool.map(_create, [pg_url] * 4))


def test_connections_stay_bounded_per_process(pg_live: LiveServer, pg_url: str) -> None:
    """Six active users, each with a session actor running queries at once: the server sees
    at most the edge's pool plus each actor's small pool, not a full pool per actor."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import text

    settings = pg_live.settings
    users = [pg_live.login(f"pool-{i}@example.com") for i in range(6)]
    convs = [client.post("/conversations").json()["id"] for _t, _u, client in users]

    def busy(index: int) -> int:
        client = users[index % len(users)][2]
        path = f"/conversations/{convs[index % len(users)]}/query"
        return client.post(path, json={"sql": "SELECT 1 AS one"}, timeout=120).status_code

    with ThreadPoolExecutor(12) as pool:
        assert set(pool.map(busy, range(12))) == {200}
    probe = Database(pg_url, pool_size=1, max_overflow=0)
    with probe.session() as s:
        database = s.execute(text("SELECT current_database()")).scalar_one()
        count = s.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"), {"d": database}
        ).scalar_one()
    probe.dispose()
    per_actor = settings.actor_database_pool_size + settings.actor_database_max_overflow
    bound = settings.database_pool_size + settings.database_max_overflow + 6 * per_actor + 1
    assert count <= bound
    for _t, _u, client in users:
        client.close()
