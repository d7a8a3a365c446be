"""Ownership matrix: another user's conversations and datasets answer 404 on every route."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from chatdf.db import Database, Dataset
from tests.live import LiveServer


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with {c} for the conversation id and {d} for the dataset id
    body: dict[str, Any] | None = None

    def send(self, client: httpx.Client, conversation_id: str, dataset_id: str) -> httpx.Response:
        url = self.path.format(c=conversation_id, d=dataset_id)
        return client.request(self.method, url, json=self.body)


CONVERSATION_ROUTES = [
    Route("GET", "/conversations/{c}"),
    Route("PATCH", "/conversations/{c}", {"title": "stolen"}),
    Route("DELETE", "/conversations/{c}"),
    Route("POST", "/conversations/{c}/messages", {"content": "show me everything"}),
    Route("POST", "/conversations/{c}/stop"),
    Route("POST", "/conversations/{c}/query", {"sql": "SELECT * FROM table1"}),
    Route("POST", "/conversations/{c}/datasets", {"url": "https://data.example.com/x.csv"}),
]
DATASET_ROUTES = [
    Route("PATCH", "/conversations/{c}/datasets/{d}", {"table_name": "stolen"}),
    Route("PATCH", "/conversations/{c}/datasets/{d}", {"tableName": "stolen"}),
    Route("DELETE", "/conversations/{c}/datasets/{d}"),
    Route("POST", "/conversations/{c}/datasets/{d}/refresh"),
]
ALL_ROUTES = CONVERSATION_ROUTES + DATASET_ROUTES


@dataclass
class World:
    """User A owns a conversation with a dataset; user B owns an empty conversation."""

    a: httpx.Client
    b: httpx.Client
    a_conv: str
    a_dataset: str
    b_conv: str

    def a_state(self) -> tuple[Any, Any]:
        return (
            self.a.get("/conversations").json(),
            self.a.get(f"/conversations/{self.a_conv}").json(),
        )


@pytest.fixture
def world(live: LiveServer) -> Iterator[World]:
    _, _, a = live.login("alice@example.com")
    _, _, b = live.login("bob@example.com")
    a_conv = a.post("/conversations", json={"title": "alice's"}).json()["id"]
    b_conv = b.post("/conversations", json={"title": "bob's"}).json()["id"]
    db = Database(live.settings.resolved_database_url)
    with db.session() as s:
        row = Dataset(
            conversation_id=a_conv,
            url="https://data.example.com/secret.csv",
            name="table1",
            position=1,
            status="ready",
            row_count=1,
            column_count=1,
            schema_json='[{"name": "x", "type": "Int64"}]',
        )
        s.add(row)
        s.flush()
        a_dataset = row.id
    db.dispose()
    yield World(a, b, a_conv, a_dataset, b_conv)
    a.close()
    b.close()


def assert_404(response: httpx.Response, route: Route) -> dict[str, Any]:
    assert response.status_code == 404, (route, response.status_code, response.text)
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "details"}, (route, body)
    assert isinstance(body["error"], str) and body["error"]
    return body


def test_other_users_conversation_is_404_on_every_route(world: World) -> None:
    before = world.a_state()
    for route in ALL_ROUTES:
        assert_404(route.send(world.b, world.a_conv, world.a_dataset), route)
    assert world.a_state() == before


def test_other_users_dataset_under_own_conversation_is_404(world: World) -> None:
    before = world.a_state()
    for route in DATASET_ROUTES:
        assert_404(route.send(world.b, world.b_conv, world.a_dataset), route)
    assert world.a_state() == before
    assert world.b.get(f"/conversations/{world.b_conv}").json()["datasets"] == []


def test_not_yours_reads_exactly_like_does_not_exist(world: World) -> None:
    """404 bodies must not reveal that another user's conversation exists."""
    missing = str(uuid.uuid4())
    for route in ALL_ROUTES:
        theirs = assert_404(route.send(world.b, world.a_conv, world.a_dataset), route)
        nothing = assert_404(route.send(world.b, missing, missing), route)
        assert theirs == nothing, route


def test_unknown_ids_are_404_for_the_owner(world: World) -> None:
    missing = str(uuid.uuid4())
    for route in ALL_ROUTES:
        assert_404(route.send(world.a, missing, world.a_dataset), route)
    for route in DATASET_ROUTES:
        assert_404(route.send(world.a, world.a_conv, missing), route)
    # A dataset of one of A's conversations is not reachable through another of A's.
    other_conv = world.a.post("/conversations", json={}).json()["id"]
    for route in DATASET_ROUTES:
        assert_404(route.send(world.a, other_conv, world.a_dataset), route)


def test_lists_show_only_own_conversations(world: World) -> None:
    assert [c["id"] for c in world.a.get("/conversations").json()["conversations"]] == [
        world.a_conv
    ]
    assert [c["id"] for c in world.b.get("/conversations").json()["conversations"]] == [
        world.b_conv
    ]


def test_delete_all_touches_only_own_conversations(world: World) -> None:
    before = world.a_state()
    r = world.b.delete("/conversations")
    assert r.json() == {"success": True, "deleted_count": 1}
    assert world.a_state() == before
    assert world.b.get("/conversations").json() == {"conversations": []}


def test_owner_still_reaches_everything_afterwards(world: World) -> None:
    for route in ALL_ROUTES:
        route.send(world.b, world.a_conv, world.a_dataset)
    r = world.a.patch(
        f"/conversations/{world.a_conv}/datasets/{world.a_dataset}", json={"table_name": "mine"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "mine"
    assert world.a.delete(f"/conversations/{world.a_conv}").json() == {"success": True}
