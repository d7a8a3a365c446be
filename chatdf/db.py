"""The relational schema (SQLAlchemy 2) and the engine/session factory for SQLite or Postgres."""

from __future__ import annotations

import fcntl
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 UTC with a trailing Z, as the contract asks."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware UTC datetimes; SQLite drops the zone, so it is put back on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


SCHEMA_LOCK = 0x63686174646601  # the advisory lock id for schema changes ("chatdf")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    avatar_url: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    google_sub: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    # "dev" or "google": how the account was made. Dev login signs in only "dev" accounts
    # (NULL: made before this column; only the built-in local dev user counts as dev).
    signed_up_with: Mapped[str | None] = mapped_column(String(20), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UserSession(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReferralKey(Base):
    __tablename__ = "referral_keys"
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class OAuthState(Base):
    __tablename__ = "oauth_states"
    state: Mapped[str] = mapped_column(String(64), primary_key=True)
    referral_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    code_verifier: Mapped[str | None] = mapped_column(String(128), nullable=True)  # PKCE
    browser_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)  # its cookie
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_user_updated", "user_id", "updated_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(100), default="New conversation")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_conversation_created", "conversation_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    sql_query: Mapped[str | None] = mapped_column(Text, nullable=True)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    tool_rounds: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # True while the turn writing this answer runs (saved as it streams, docs/chat.md); an
    # answer left True by an actor that died is closed as interrupted by the next one.
    in_progress: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        UniqueConstraint("conversation_id", "url", name="uq_datasets_conversation_url"),
        Index("ix_datasets_conversation", "conversation_id", "position"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    name: Mapped[str] = mapped_column(String(50))
    position: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="loading")
    format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    row_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    column_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    schema_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When its content was last read from the URL (load or refresh): every node's cached copy
    # must be at least this recent (actors.dataset_task.ensure_local).
    loaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# Table names are unique per conversation, case-insensitively (Polars resolves them so): the
# database refuses a rename and an admission that race for one name.
Index(
    "uq_datasets_conversation_name",
    Dataset.conversation_id,
    func.lower(Dataset.name),
    unique=True,
)


class TokenUsage(Base):
    __tablename__ = "token_usage"
    __table_args__ = (Index("ix_token_usage_user_created", "user_id", "created_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(36))
    conversation_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Database:
    """An engine plus a session factory; one per process (edge, actor or task)."""

    def __init__(
        self, url: str, *, busy_timeout_s: float = 30.0, pool_size: int = 5, max_overflow: int = 5
    ) -> None:
        """`pool_size` + `max_overflow` bound this process's connections to a server database
        (PostgreSQL): each session actor is a process with its own pool (docs/architecture.md,
        "Database connections")."""
        self.url = url
        kwargs: dict[str, Any] = {}
        if not url.startswith("sqlite"):
            # A server drops idle connections (restarts, idle timeouts): test each on checkout.
            # A SQLite file has no server to lose, so its checkouts skip the round trip.
            kwargs.update(
                pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=30
            )
        if url.startswith("sqlite"):
            path = self._sqlite_path()
            if path is not None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": busy_timeout_s, "check_same_thread": False}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            busy_ms = int(busy_timeout_s * 1000)
            event.listen(
                self.engine, "connect", lambda conn, record: _sqlite_pragmas(conn, busy_ms)
            )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Brings the schema to this code's newest migration (chatdf/migrations), on start.

        Safe with several edges starting at once: they take turns through the schema lock, and
        each later one finds the database at head. A database made before migrations is adopted
        by the baseline revision without losing a row; one a newer chatdf migrated further is
        left as it is, with a warning.
        """
        from chatdf import migrations

        try:
            with self.schema_lock() as conn:
                migrations.upgrade(conn)
        except migrations.NewerSchema as newer:
            # A rollback to this version during a rolling upgrade: revisions keep the schema
            # usable by the previous release (docs/operations.md), so serve on it.
            log.warning("%s", newer)

    def current_revision(self) -> str | None:
        """The migration the database is at (None: empty, or made before migrations)."""
        from chatdf import migrations

        with self.engine.connect() as conn:
            return migrations.current_revision(conn)

    @contextmanager
    def schema_lock(self) -> Iterator[Connection]:
        """A connection in a transaction that holds the cross-process schema lock."""
        with self._schema_file_lock(), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Edges starting together take turns; the lock ends with the transaction.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            yield conn

    @contextmanager
    def _schema_file_lock(self) -> Iterator[None]:
        """SQLite has no advisory lock and runs DDL outside a transaction, so processes starting
        together on one file take turns through an exclusive flock on a file beside it (a
        separate file: closing any descriptor of the database itself would drop SQLite's own
        POSIX locks)."""
        path = self._sqlite_path()
        if path is None:
            yield
            return
        with open(f"{path}.schema-lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _sqlite_path(self) -> str | None:
        """The database file of a SQLite URL; None for other databases and in-memory SQLite."""
        parsed = make_url(self.url)
        if parsed.get_backend_name() != "sqlite":
            return None
        path = parsed.database
        return path if path and path != ":memory:" else None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, busy_ms: int) -> None:
    # WAL lets the edge and the session actors (other processes) read while one writes.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
