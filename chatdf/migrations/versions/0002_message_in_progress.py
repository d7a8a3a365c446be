"""messages.in_progress: an assistant answer saved while it streams (docs/chat.md).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Nullable, no default: existing rows (finished answers and user messages) read as not in progress.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Only if missing: a database adopted at 0001 may have been given the column by the
    # additive start-up step of an earlier build (adoption stamps 0001, then upgrades).
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("messages")}
    if "in_progress" not in columns:
        op.add_column("messages", sa.Column("in_progress", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("in_progress")
