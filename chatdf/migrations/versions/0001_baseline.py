"""Baseline: the schema chatdf created before Alembic (commit f5c1651), frozen here.

Revision ID: 0001
Revises:
Create Date: 2026-12-02

An empty database gets every table and index. A database made before Alembic (tables, but no
alembic_version) is adopted: it is brought to this schema the way the old start-up did it, without
touching a row (missing tables, indexes and nullable columns are added; an index that existing rows
violate is left out and logged), then stamped. The tables are written out here rather than taken
from chatdf.db, so later model changes cannot alter what this revision means.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import CreateIndex

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("chatdf.migrations")


def baseline_metadata() -> sa.MetaData:
    """The seven tables as chatdf.db declared them at the baseline."""
    meta = sa.MetaData()
    when = sa.DateTime(timezone=True)
    sa.Table(
        "users",
        meta,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("avatar_url", sa.String(1000), nullable=True),
        sa.Column("google_sub", sa.String(200), nullable=True, unique=True),
        sa.Column("signed_up_with", sa.String(20), nullable=True),
        sa.Column("created_at", when, nullable=False),
    )
    sa.Table(
        "sessions",
        meta,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "user_id",
            sa.String(36),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True, index=True),
        sa.Column("created_at", when, nullable=False),
        sa.Column("expires_at", when, nullable=False),
    )
    sa.Table(
        "referral_keys",
        meta,
        sa.Column("key_hash", sa.String(64), primary_key=True),
        sa.Column("created_at", when, nullable=False),
        sa.Column("used_by", sa.String(36), nullable=True),
        sa.Column("used_at", when, nullable=True),
    )
    sa.Table(
        "oauth_states",
        meta,
        sa.Column("state", sa.String(64), primary_key=True),
        sa.Column("referral_key", sa.String(200), nullable=True),
        sa.Column("code_verifier", sa.String(128), nullable=True),
        sa.Column("browser_hash", sa.String(64), nullable=True),
        sa.Column("created_at", when, nullable=False),
    )
    sa.Table(
        "conversations",
        meta,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("title", sa.String(100), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("updated_at", when, nullable=False),
        sa.Index("ix_conversations_user_updated", "user_id", "updated_at"),
    )
    conversation_fk = sa.ForeignKey("conversations.id", ondelete="CASCADE")
    sa.Table(
        "messages",
        meta,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("conversation_id", sa.String(36), conversation_fk, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("sql_query", sa.Text(), nullable=True),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column("tool_rounds", sa.Text(), nullable=True),
        sa.Column("created_at", when, nullable=False),
        sa.Index("ix_messages_conversation_created", "conversation_id", "created_at"),
    )
    datasets = sa.Table(
        "datasets",
        meta,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.String(36),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("format", sa.String(16), nullable=True),
        sa.Column("row_count", sa.Integer(), nullable=True),
        sa.Column("column_count", sa.Integer(), nullable=True),
        sa.Column("schema_json", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", when, nullable=False),
        sa.Column("loaded_at", when, nullable=True),
        sa.UniqueConstraint("conversation_id", "url", name="uq_datasets_conversation_url"),
        sa.Index("ix_datasets_conversation", "conversation_id", "position"),
    )
    sa.Index(
        "uq_datasets_conversation_name",
        datasets.c.conversation_id,
        sa.func.lower(datasets.c.name),
        unique=True,
    )
    sa.Table(
        "token_usage",
        meta,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("conversation_id", sa.String(36), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Index("ix_token_usage_user_created", "user_id", "created_at"),
    )
    return meta


def upgrade() -> None:
    conn = op.get_bind()
    meta = baseline_metadata()
    present = set(sa.inspect(conn).get_table_names()) & set(meta.tables)
    meta.create_all(conn, checkfirst=True)  # every missing table, with its indexes
    if present:
        log.info("adopting a database made before migrations (tables: %s)", sorted(present))
        add_missing_columns(conn, meta)
        add_missing_indexes(conn, meta)


def add_missing_columns(conn: Connection, meta: sa.MetaData) -> None:
    """Columns an older chatdf did not have yet, added nullable (rows keep their values)."""
    schema = sa.inspect(conn)
    for table in meta.sorted_tables:
        have = {column["name"] for column in schema.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                sql_type = column.type.compile(dialect=conn.dialect)
                op.execute(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {sql_type}')


def add_missing_indexes(conn: Connection, meta: sa.MetaData) -> None:
    """Indexes an older chatdf did not make, or that were dropped. IF NOT EXISTS, because
    reflection cannot see expression indexes on SQLite; one that rows violate is logged."""
    for table in meta.sorted_tables:
        for index in table.indexes:
            try:
                with conn.begin_nested():
                    conn.execute(CreateIndex(index, if_not_exists=True))
            except IntegrityError:
                log.warning("index %s not created: existing rows violate it", index.name)


def downgrade() -> None:
    """Below the baseline there is no schema: every table goes (and every row with it)."""
    baseline_metadata().drop_all(op.get_bind())
