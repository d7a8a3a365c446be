"""Schema migrations (Alembic) on real SQLite files and a real PostgreSQL server: a fresh database
matches the models, one made before migrations is adopted without losing a row, and the
`chatdf db` commands."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, select, text

from chatdf import migrations
from chatdf.db import (
    Base,
    Conversation,
    Database,
    Dataset,
    Message,
    OAuthState,
    ReferralKey,
    TokenUsage,
    User,
    UserSession,
)
from tests.pg import SERVER_URL, fresh_database

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent
# SQLite cannot reflect the expression index (case-insensitive table names); Alembic says so and
# skips it there, and the tests below look it up in sqlite_master instead. PostgreSQL compares it.
EXPRESSION_INDEX_WARNINGS = (
    "ignore:Skipped unsupported reflection of expression-based index",
    "ignore:autogenerate skipping metadata-specified expression-based index",
)

# One row in every table, written as the code before migrations wrote them (raw SQL, its columns).
PRE_MIGRATION_ROWS = [
    "INSERT INTO users (id, email, name, avatar_url, google_sub, signed_up_with, created_at) "
    "VALUES ('u1', 'old@example.com', 'Old User', NULL, 'sub-1', 'google', '2026-11-01 10:00:00')",
    "INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at) VALUES "
    "('s1', 'u1', 'hash-1', '2026-11-01 10:00:00', '2099-01-01 00:00:00')",
    "INSERT INTO referral_keys (key_hash, created_at, used_by, used_at) "
    "VALUES ('key-1', '2026-11-01 10:00:00', 'u1', '2026-11-01 10:00:01')",
    "INSERT INTO oauth_states (state, referral_key, code_verifier, browser_hash, created_at) "
    "VALUES ('state-1', NULL, 'verifier', 'browser', '2026-11-01 10:00:00')",
    "INSERT INTO conversations (id, user_id, title, created_at, updated_at) "
    "VALUES ('c1', 'u1', 'Sales', '2026-11-01 10:00:00', '2026-11-01 11:00:00')",
    "INSERT INTO messages (id, conversation_id, role, content, sql_query, token_count, "
    "tool_rounds, created_at) VALUES ('m1', 'c1', 'assistant', 'Revenue is up.', "
    "'SELECT 1', 42, '[]', '2026-11-01 10:30:00')",
    "INSERT INTO datasets (id, conversation_id, url, name, position, status, format, row_count, "
    "column_count, schema_json, error, created_at, loaded_at) VALUES ('d1', 'c1', "
    "'http://data.example/sales.parquet', 'sales', 0, 'ready', 'parquet', 1000, 5, '[]', NULL, "
    "'2026-11-01 10:00:00', '2026-11-01 10:00:02')",
    "INSERT INTO token_usage (user_id, conversation_id, input_tokens, output_tokens, created_at) "
    "VALUES ('u1', 'c1', 100, 42, '2026-11-01 10:30:00')",
]


def pre_migration_database(url: str, dialect: str, drop_index: str | None = None) -> None:
    """A database exactly as chatdf made it before migrations (its DDL, committed as a fixture),
    with a row in every table; optionally without one of its indexes."""
    lines = (FIXTURES / f"schema-0001-{dialect}.sql").read_text().splitlines()
    ddl = "\n".join(line for line in lines if not line.startswith("--"))
    statements = [s for s in ddl.split(";\n") if s.strip()]
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in statements + PRE_MIGRATION_ROWS:
            conn.execute(text(statement))
        if drop_index:
            conn.execute(text(f"DROP INDEX {drop_index}"))
    engine.dispose()


def assert_rows_survived(db: Database) -> None:
    with db.session() as s:
        user = s.scalars(select(User)).one()
        assert (user.id, user.email, user.google_sub, user.signed_up_with) == (
            "u1",
            "old@example.com",
            "sub-1",
            "google",
        )
        assert s.scalars(select(UserSession)).one().token_hash == "hash-1"
        assert s.scalars(select(ReferralKey)).one().used_by == "u1"
        assert s.scalars(select(OAuthState)).one().code_verifier == "verifier"
        assert s.scalars(select(Conversation)).one().title == "Sales"
        message = s.scalars(select(Message)).one()
        assert (message.content, message.sql_query, message.token_count) == (
            "Revenue is up.",
            "SELECT 1",
            42,
        )
        dataset = s.scalars(select(Dataset)).one()
        assert (dataset.name, dataset.status, dataset.row_count) == ("sales", "ready", 1000)
        assert dataset.loaded_at is not None and dataset.loaded_at.tzinfo is not None
        usage = s.scalars(select(TokenUsage)).one()
        assert (usage.input_tokens, usage.output_tokens) == (100, 42)


def schema_diff(db: Database) -> list[object]:
    """What Alembic's autogenerate would write to make the database match the models."""
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def sqlite_indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as raw:
        return {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not SERVER_URL:
        pytest.skip("POSTGRES_TEST_URL is not set (scripts/test.sh starts a server when it can)")
    with fresh_database("chatdf_migr") as url:
        yield url


@pytest.mark.filterwarnings(EXPRESSION_INDEX_WARNINGS[0])
@pytest.mark.filterwarnings(EXPRESSION_INDEX_WARNINGS[1])
def test_a_fresh_sqlite_database_matches_the_models(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert db.current_revision() is None
    db.create_schema()
    db.create_schema()  # at head: nothing to do
    assert db.current_revision() == migrations.head_revision()
    assert schema_diff(db) == []
    assert "uq_datasets_conversation_name" in sqlite_indexes(tmp_path / "fresh.db")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1


@pytest.mark.filterwarnings(EXPRESSION_INDEX_WARNINGS[0])
@pytest.mark.filterwarnings(EXPRESSION_INDEX_WARNINGS[1])
def test_a_sqlite_database_made_before_migrations_is_adopted_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "today.db"
    pre_migration_database(f"sqlite:///{path}", "sqlite")
    db = Database(f"sqlite:///{path}")
    assert db.current_revision() is None
    db.create_schema()
    assert db.current_revision() == migrations.head_revision()
    assert_rows_survived(db)
    assert schema_diff(db) == []


@pytest.mark.filterwarnings(EXPRESSION_INDEX_WARNINGS[0])
@pytest.mark.filterwarnings(EXPRESSION_INDEX_WARNINGS[1])
def test_a_dropped_index_is_recreated_on_sqlite(tmp_path: Path) -> None:
    """A database from before migrations that lacks indexes (an older chatdf never made the
    case-insensitive name index; an operator dropped another) gets them back."""
    path = tmp_path / "noindex.db"
    url = f"sqlite:///{path}"
    pre_migration_database(url, "sqlite", drop_index="uq_datasets_conversation_name")
    with sqlite3.connect(path) as raw:
        raw.execute("DROP INDEX ix_messages_conversation_created")
    assert not {"uq_datasets_conversation_name", "ix_messages_conversation_created"} & (
        sqlite_indexes(path)
    )
    db = Database(f"sqlite:///{path}")
    db.create_schema()
    assert {"uq_datasets_conversation_name", "ix_messages_conversation_created"} <= (
        sqlite_indexes(path)
    )
    assert_rows_survived(db)
    assert schema_diff(db) == []


@pytest.mark.postgres
def test_a_fresh_postgres_database_matches_the_models(pg_url: str) -> None:
    db = Database(pg_url)
    db.create_schema()
    assert db.current_revision() == migrations.head_revision()
    assert schema_diff(db) == []  # the expression index included: PostgreSQL reflects it
    db.dispose()


@pytest.mark.postgres
def test_a_postgres_database_made_before_migrations_is_adopted_without_loss(pg_url: str) -> None:
    pre_migration_database(pg_url, "postgresql", drop_index="uq_datasets_conversation_name")
    db = Database(pg_url)
    assert db.current_revision() is None
    db.create_schema()
    assert db.current_revision() == migrations.head_revision()
    assert_rows_survived(db)
    assert schema_diff(db) == []  # the dropped index is back
    db.dispose()


def run_chatdf(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    chatdf = Path(sys.executable).parent / "chatdf"
    clean = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [str(chatdf), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.filterwarnings(EXPRESSION_INDEX_WARNINGS[0])
def test_db_current_and_upgrade_commands_on_data_dir(tmp_path: Path) -> None:
    """DATA_DIR as `serve` reads it: current says none, upgrade migrates and says head."""
    env = {"DATA_DIR": str(tmp_path / "data")}
    before = run_chatdf("db", "current", env=env)
    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith("none")
    up = run_chatdf("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    head = migrations.head_revision()
    assert up.stdout.strip() == f"{head} (head)"
    assert run_chatdf("db", "current", env=env).stdout.strip() == f"{head} (head)"
    assert Database(f"sqlite:///{tmp_path / 'data' / 'chatdf.db'}").current_revision() == head


def test_db_upgrade_adopts_a_database_made_before_migrations(tmp_path: Path) -> None:
    path = tmp_path / "today.db"
    pre_migration_database(f"sqlite:///{path}", "sqlite")
    up = run_chatdf("db", "upgrade", env={"DATABASE_URL": f"sqlite:///{path}"})
    assert up.returncode == 0, up.stderr
    assert_rows_survived(Database(f"sqlite:///{path}"))


def test_db_commands_say_why_when_the_database_is_unreachable() -> None:
    url = "postgresql+psycopg://chatdf:not-this-secret@127.0.0.1:1/chatdf"
    for action in ("current", "upgrade"):
        result = run_chatdf("db", action, env={"DATABASE_URL": url})
        assert result.returncode == 1
        assert result.stderr.startswith("chatdf: database error: ")
        assert "Traceback" not in result.stderr
        assert "not-this-secret" not in result.stderr + result.stdout


@pytest.mark.postgres
def test_db_upgrade_on_postgres(pg_url: str) -> None:
    pre_migration_database(pg_url, "postgresql")
    up = run_chatdf("db", "upgrade", env={"DATABASE_URL": pg_url})
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == f"{migrations.head_revision()} (head)"
    db = Database(pg_url)
    assert_rows_survived(db)
    db.dispose()


@pytest.mark.slow
def test_the_migrations_ship_with_the_package(tmp_path: Path) -> None:
    """A non-editable install finds the scripts: the wheel carries env.py, the template and
    every revision."""
    import shutil
    import zipfile

    source = tmp_path / "src"  # a copy: setuptools leaves build/ in the tree it builds
    for name in ("chatdf", "actors", "api", "ws"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", source / "pyproject.toml")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("chatdf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    versions = Path(migrations.SCRIPT_LOCATION) / "versions"
    revisions = sorted(p.name for p in versions.glob("0*.py"))
    assert revisions
    expected = {"chatdf/migrations/env.py", "chatdf/migrations/script.py.mako"} | {
        f"chatdf/migrations/versions/{name}" for name in revisions
    }
    assert expected <= names


@pytest.mark.filterwarnings(EXPRESSION_INDEX_WARNINGS[0])
def test_a_database_a_newer_chatdf_migrated_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rollback during a rolling upgrade: this code starts on it (with a warning) and changes
    nothing; `db upgrade` refuses and says why, `db current` says it is newer."""
    path = tmp_path / "newer.db"
    db = Database(f"sqlite:///{path}")
    db.create_schema()
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    db.create_schema()
    assert "schema revision 9999" in caplog.text
    assert db.current_revision() == "9999"
    env = {"DATABASE_URL": f"sqlite:///{path}"}
    head = migrations.head_revision()
    current = run_chatdf("db", "current", env=env)
    assert current.returncode == 0
    assert current.stdout.strip() == f"9999 (newer than this chatdf's head {head})"
    up = run_chatdf("db", "upgrade", env=env)
    assert up.returncode == 1
    assert "does not know: a newer version migrated it; nothing was changed" in up.stderr
    assert db.current_revision() == "9999"
    db.dispose()
