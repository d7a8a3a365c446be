"""Schema migrations (Alembic): the configuration, and upgrading or reading a database's revision.

Alembic is configured here in code (`script_location` is this package), so an installed chatdf
needs no alembic.ini; `chatdf db upgrade` / `chatdf db current` and every edge's start use it.
Callers hold the cross-process schema lock (chatdf.db.Database.create_schema) around `upgrade`.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection

SCRIPT_LOCATION = str(Path(__file__).resolve().parent)


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic configuration on this package's scripts, bound to a connection or a URL."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if url is not None:
        # ConfigParser interpolation: a literal % in a password must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class NewerSchema(Exception):
    """The database is at a revision this code does not ship: a newer chatdf migrated it."""

    def __init__(self, current: str, head: str) -> None:
        super().__init__(
            f"the database is at schema revision {current}, which this chatdf (head {head}) "
            "does not know: a newer version migrated it; nothing was changed"
        )
        self.current = current


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Brings the database on this connection to `revision` (a database without Alembic's
    version table is taken as one created before migrations and adopted by the baseline).
    Raises NewerSchema, changing nothing, when a newer chatdf already migrated it further."""
    current = current_revision(connection)
    if current is not None and not is_known(current):
        raise NewerSchema(current, head_revision())
    command.upgrade(alembic_config(connection), revision)


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None for an empty one or one made before Alembic."""
    return MigrationContext.configure(connection).get_current_revision()


def is_known(revision: str) -> bool:
    """Whether this code ships the revision."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def head_revision() -> str:
    """The newest revision this code ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "chatdf/migrations/versions holds no revision"
    return head
