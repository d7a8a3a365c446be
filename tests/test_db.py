"""The schema on a real SQLite file: created on start, and older databases gain new columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from chatdf.db import Database


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
def test_create_schema_is_idempotent_and_indexed(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'a.db'}")
    db.create_schema()
    db.create_schema()
    insp = inspect(db.engine)
    assert {
        "users",
        "sessions",
        "referral_keys",
        "conversations",
        "messages",
        "datasets",
        "token_usage",
    } <= set(insp.get_table_names())
    indexed = {
        (t, tuple(i["column_names"])) for t in insp.get_table_names() for i in insp.get_indexes(t)
    }
    assert ("sessions", ("token_hash",)) in indexed
    assert ("conversations", ("user_id", "updated_at")) in indexed
    assert ("messages", ("conversation_id", "created_at")) in indexed
    assert ("token_usage", ("user_id", "created_at")) in indexed


def test_older_database_gains_missing_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    with old.begin() as conn:  # a messages table from before tool rounds were stored
        conn.execute(
            text(
                "CREATE TABLE messages (id VARCHAR(36) PRIMARY KEY, conversation_id VARCHAR(36), "
                "role VARCHAR(16), content TEXT, sql_query TEXT, token_count INTEGER, "
                "created_at DATETIME)"
            )
        )
        conn.execute(text("INSERT INTO messages (id, role, content) VALUES ('m1', 'user', 'hi')"))
    old.dispose()
    db = Database(url)
    db.create_schema()
    columns = {c["name"] for c in inspect(db.engine).get_columns("messages")}
    assert "tool_rounds" in columns
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT content FROM messages")).scalar() == "hi"


def _create(url: str, barrier: Any) -> None:
    db = Database(url)
    barrier.wait(timeout=60)  # every process reaches create_schema at the same moment
    db.create_schema()
    db.dispose()


def test_edges_starting_together_all_create_the_schema(tmp_path: Path) -> None:
    """Several processes creating the schema of one fresh SQLite file at once all succeed."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):  # a fresh file each round
        url = f"sqlite:///{tmp_path / f'race{attempt}.db'}"
        barrier = ctx.Barrier(6)
        procs = [ctx.Process(target=_create, args=(url, barrier)) for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
        assert [proc.exitcode for proc in procs] == [0] * 6
        tables = set(inspect(Database(url).engine).get_table_names())
        assert {"users", "conversations", "messages", "token_usage"} <= tables


def test_the_database_refuses_two_tables_of_one_name(tmp_path: Path) -> None:
    """A rename and an admission racing for one name: the unique index refuses the second,
    whatever case it is written in."""
    from sqlalchemy.exc import IntegrityError

    from chatdf.db import Conversation, Dataset, User

    db = Database(f"sqlite:///{tmp_path / 'names.db'}")
    db.create_schema()
    with db.session() as s:
        user = User(email="n@example.com")
        s.add(user)
        s.flush()
        conv = Conversation(user_id=user.id)
        s.add(conv)
        s.flush()
        s.add(Dataset(conversation_id=conv.id, url="http://a/1.csv", name="sales"))
        conv_id = conv.id
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(Dataset(conversation_id=conv_id, url="http://a/2.csv", name="SALES"))


def test_an_older_database_gets_the_new_unique_index(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    Database(f"sqlite:///{path}").create_schema()
    with sqlite3.connect(path) as raw:  # as a chatdf from before that index and migrations
        raw.execute("DROP INDEX uq_datasets_conversation_name")
        raw.execute("DROP TABLE alembic_version")
    Database(f"sqlite:///{path}").create_schema()
    with sqlite3.connect(path) as raw:
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "uq_datasets_conversation_name" in names
