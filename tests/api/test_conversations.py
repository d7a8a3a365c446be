"""Conversation routes over real HTTP: create, list, read, rename, delete one and all."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from chatdf.db import Conversation, Database, Dataset, Message, utcnow
from tests.live import LiveServer

SCHEMA = [{"name": "a", "type": "Int64"}, {"name": "b", "type": "String"}]


@pytest.fixture
def db(live: LiveServer) -> Iterator[Database]:
    database = Database(live.settings.resolved_database_url)
    yield database
    database.dispose()


def create(client: httpx.Client, **body: Any) -> dict[str, Any]:
    r = client.post("/conversations", json=body or None)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def parse_utc(value: str) -> datetime:
    """Parses an ISO 8601 timestamp and checks it is UTC."""
    assert value.endswith("Z") or value.endswith("+00:00"), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.utcoffset() == timedelta(0)
    return parsed


def assert_uuid(value: str) -> None:
    assert str(uuid.UUID(value)) == value


def seed_dataset(db: Database, conversation_id: str, name: str, position: int) -> str:
    """A ready dataset row, as the loader leaves one (the loader itself is tested elsewhere)."""
    with db.session() as s:
        row = Dataset(
            conversation_id=conversation_id,
            url=f"https://data.example.com/{name}.csv",
            name=name,
            position=position,
            status="ready",
            format="csv",
            row_count=3,
            column_count=2,
            schema_json=json.dumps(SCHEMA),
        )
        s.add(row)
        s.flush()
        return row.id


def seed_message(db: Database, conversation_id: str, role: str, content: str, **kw: Any) -> str:
    with db.session() as s:
        row = Message(conversation_id=conversation_id, role=role, content=content, **kw)
        s.add(row)
        s.flush()
        return row.id


def test_create_returns_201_with_id_title_created_at(client: httpx.Client) -> None:
    body = create(client)
    assert set(body) == {"id", "title", "created_at"}
    assert_uuid(body["id"])
    assert isinstance(body["title"], str) and body["title"]
    created = parse_utc(body["created_at"])
    assert abs(created - utcnow()) < timedelta(minutes=5)


def test_create_accepts_an_optional_title(client: httpx.Client) -> None:
    assert create(client, title="Sales 2024")["title"] == "Sales 2024"
    r = client.post("/conversations", content=b"", headers={"Content-Type": "application/json"})
    assert r.status_code == 201


def test_list_is_newest_updated_first_with_dataset_count(
    client: httpx.Client, db: Database
) -> None:
    assert client.get("/conversations").json() == {"conversations": []}
    first, second, third = (create(client, title=t) for t in ("one", "two", "three"))
    seed_dataset(db, second["id"], "table1", 1)
    seed_dataset(db, second["id"], "table2", 2)
    listed = client.get("/conversations").json()["conversations"]
    assert [c["id"] for c in listed] == [third["id"], second["id"], first["id"]]
    for item in listed:
        assert set(item) == {"id", "title", "created_at", "updated_at", "dataset_count"}
        parse_utc(item["created_at"])
        parse_utc(item["updated_at"])
    assert [c["dataset_count"] for c in listed] == [0, 2, 0]
    # Renaming the oldest makes it the most recently updated.
    assert client.patch(f"/conversations/{first['id']}", json={"title": "renamed"}).is_success
    listed = client.get("/conversations").json()["conversations"]
    assert [c["id"] for c in listed] == [first["id"], third["id"], second["id"]]
    assert listed[0]["title"] == "renamed"


def test_get_returns_messages_and_datasets(client: httpx.Client, db: Database) -> None:
    conv = create(client, title="detail")
    empty = client.get(f"/conversations/{conv['id']}").json()
    assert empty["messages"] == [] and empty["datasets"] == []
    user_msg = seed_message(db, conv["id"], "user", "How many rows?")
    bot_msg = seed_message(
        db,
        conv["id"],
        "assistant",
        "There are 3 rows.",
        sql_query="SELECT COUNT(*) FROM table1",
        token_count=42,
        created_at=utcnow() + timedelta(seconds=1),
    )
    dataset_id = seed_dataset(db, conv["id"], "table1", 1)
    r = client.get(f"/conversations/{conv['id']}")
    assert r.status_code == 200
    body = r.json()
    assert {"id", "title", "created_at", "updated_at", "messages", "datasets"} <= set(body)
    assert body["id"] == conv["id"] and body["title"] == "detail"
    parse_utc(body["created_at"])
    parse_utc(body["updated_at"])
    assert [m["id"] for m in body["messages"]] == [user_msg, bot_msg]
    for m in body["messages"]:
        assert {"id", "role", "content", "sql_query", "token_count", "created_at"} <= set(m)
        parse_utc(m["created_at"])
    assert body["messages"][0]["sql_query"] is None
    bot = {k: v for k, v in body["messages"][1].items() if k != "created_at"}
    assert bot == {
        "id": bot_msg,
        "role": "assistant",
        "content": "There are 3 rows.",
        "sql_query": "SELECT COUNT(*) FROM table1",
        "token_count": 42,
    }
    (dataset,) = body["datasets"]
    assert {"id", "name", "url", "status", "row_count", "column_count", "schema"} <= set(dataset)
    assert dataset["id"] == dataset_id
    assert dataset["name"] == "table1"
    assert dataset["status"] == "ready"
    assert (dataset["row_count"], dataset["column_count"]) == (3, 2)
    assert dataset["schema"] == SCHEMA


def test_rename(client: httpx.Client) -> None:
    conv = create(client)
    r = client.patch(f"/conversations/{conv['id']}", json={"title": "  Quarterly  "})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"id", "title", "updated_at"}
    assert body["id"] == conv["id"]
    assert body["title"] == "Quarterly"
    assert parse_utc(body["updated_at"]) >= parse_utc(conv["created_at"])
    for title in ("x", "y" * 100):
        assert (
            client.patch(f"/conversations/{conv['id']}", json={"title": title}).json()["title"]
            == title
        )
    assert client.get(f"/conversations/{conv['id']}").json()["title"] == "y" * 100


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": "   "},
        {"title": "z" * 101},
        {"title": 5},
        {"title": None},
        {"title": ["a"]},
        {"title": {"text": "a"}},
        {"title": True},
        {},
    ],
)
def test_rename_rejects_bad_titles(client: httpx.Client, body: dict[str, Any]) -> None:
    conv = create(client, title="keep")
    r = client.patch(f"/conversations/{conv['id']}", json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error", "details"}
    assert client.get(f"/conversations/{conv['id']}").json()["title"] == "keep"


@pytest.mark.parametrize("title", ["", "z" * 101, 7])
def test_create_rejects_bad_titles(client: httpx.Client, title: object) -> None:
    r = client.post("/conversations", json={"title": title})
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error", "details"}
    assert client.get("/conversations").json() == {"conversations": []}


def test_delete_one_removes_its_messages_and_datasets(client: httpx.Client, db: Database) -> None:
    doomed, kept = create(client), create(client)
    for conv in (doomed, kept):
        seed_message(db, conv["id"], "user", "hi")
        seed_dataset(db, conv["id"], "table1", 1)
    r = client.delete(f"/conversations/{doomed['id']}")
    assert r.status_code == 200
    assert r.json() == {"success": True}
    assert client.get(f"/conversations/{doomed['id']}").status_code == 404
    assert client.delete(f"/conversations/{doomed['id']}").status_code == 404
    assert [c["id"] for c in client.get("/conversations").json()["conversations"]] == [kept["id"]]
    with db.session() as s:
        for model in (Message, Dataset):
            left = s.scalar(
                select(func.count()).select_from(model).where(model.conversation_id == doomed["id"])
            )
            assert left == 0
    kept_detail = client.get(f"/conversations/{kept['id']}").json()
    assert len(kept_detail["messages"]) == 1 and len(kept_detail["datasets"]) == 1


def test_delete_all(client: httpx.Client, db: Database) -> None:
    assert client.delete("/conversations").json() == {"success": True, "deleted_count": 0}
    ids = [create(client)["id"] for _ in range(3)]
    seed_message(db, ids[0], "user", "hi")
    seed_dataset(db, ids[1], "table1", 1)
    r = client.delete("/conversations")
    assert r.status_code == 200
    assert r.json() == {"success": True, "deleted_count": 3}
    assert client.get("/conversations").json() == {"conversations": []}
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Conversation)) == 0
        assert s.scalar(select(func.count()).select_from(Message)) == 0
        assert s.scalar(select(func.count()).select_from(Dataset)) == 0
