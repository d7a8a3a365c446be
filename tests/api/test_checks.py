"""Sign-in and ownership checks answered together (api/checks.py), on a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError

from api.checks import OwnerChecker, SessionChecker
from chatdf.db import Conversation, Database, UserSession, utcnow
from chatdf.errors import NotFound
from chatdf.store import create_session, get_or_create_user, hash_secret

TTL_S = 7 * 24 * 3600


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'auth.db'}")
    db.create_schema()
    yield db
    db.dispose()


def sign_in(db: Database, email: str) -> tuple[str, str]:
    """A user and one session: (user id, raw token)."""
    with db.session() as s:
        user, _ = get_or_create_user(s, email)
        s.flush()
        return user.id, create_session(s, user.id, TTL_S)


def set_expiry(db: Database, token: str, expires_at: Any) -> None:
    with db.session() as s:
        s.execute(
            update(UserSession)
            .where(UserSession.token_hash == hash_secret(token))
            .values(expires_at=expires_at)
        )


def expiry(db: Database, token: str) -> Any:
    with db.session() as s:
        return s.scalar(
            select(UserSession.expires_at).where(UserSession.token_hash == hash_secret(token))
        )


class Statements:
    """The SQL statements the database ran, from SQLAlchemy's own event."""

    def __init__(self, db: Database) -> None:
        self.seen: list[str] = []
        event.listen(db.engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen.append(statement.lstrip().split(None, 1)[0].upper())

    def count(self, verb: str) -> int:
        return self.seen.count(verb)


async def test_a_burst_of_checks_is_one_query_and_each_gets_its_own_answer(db: Database) -> None:
    users = [sign_in(db, f"u{i}@example.com") for i in range(50)]
    _, expired = sign_in(db, "old@example.com")
    set_expiry(db, expired, utcnow() - timedelta(seconds=1))
    statements = Statements(db)
    checker = SessionChecker(db, TTL_S)

    tokens = [token for _, token in users] + [expired, "unknown", "x" * 201, ""]
    answers = await asyncio.gather(*(checker.check(token) for token in tokens))

    assert [(a.id, a.token) if a else None for a in answers[:50]] == users
    assert [a.email for a in answers[:50] if a] == [f"u{i}@example.com" for i in range(50)]
    assert answers[50:] == [None, None, None, None]
    assert statements.count("SELECT") == 1  # 52 tokens worth asking about, one query


async def test_one_token_checked_twice_at_once_is_asked_once(db: Database) -> None:
    user_id, token = sign_in(db, "twice@example.com")
    statements = Statements(db)
    checker = SessionChecker(db, TTL_S)
    first, second = await asyncio.gather(checker.check(token), checker.check(token))
    assert first is not None and second is not None
    assert first.id == second.id == user_id
    assert statements.count("SELECT") == 1


async def test_checks_arriving_during_a_batch_form_the_next_one(db: Database) -> None:
    users = [sign_in(db, f"later{i}@example.com") for i in range(20)]
    statements = Statements(db)
    checker = SessionChecker(db, TTL_S)
    first = asyncio.create_task(checker.check(users[0][1]))
    await asyncio.sleep(0)  # the first batch (of one) is being looked up
    rest = await asyncio.gather(*(checker.check(token) for _, token in users[1:]))
    assert (await first) is not None
    assert [a.id if a else None for a in rest] == [uid for uid, _ in users[1:]]
    assert statements.count("SELECT") == 2


async def test_sliding_expiry_is_written_once_a_minute_at_most(db: Database) -> None:
    _, due = sign_in(db, "due@example.com")
    _, fresh = sign_in(db, "fresh@example.com")
    set_expiry(db, due, utcnow() + timedelta(hours=1))
    fresh_expiry = expiry(db, fresh)
    statements = Statements(db)
    checker = SessionChecker(db, TTL_S)

    assert all(await asyncio.gather(checker.check(due), checker.check(fresh)))
    await checker.written()

    assert expiry(db, due) > utcnow() + timedelta(days=6)
    assert expiry(db, fresh) == fresh_expiry  # extended less than a minute ago: left alone
    assert statements.count("UPDATE") == 1


async def test_a_database_error_reaches_every_caller_and_the_next_batch_works(
    db: Database, tmp_path: Path
) -> None:
    _, token = sign_in(db, "err@example.com")
    broken = SessionChecker(Database(f"sqlite:///{tmp_path / 'empty.db'}"), TTL_S)  # no tables
    results = await asyncio.gather(
        broken.check(token), broken.check("other"), return_exceptions=True
    )
    assert all(isinstance(r, OperationalError) for r in results)

    checker = SessionChecker(db, TTL_S)
    assert (await checker.check(token)) is not None


async def test_a_caller_that_goes_away_leaves_the_others_answered(db: Database) -> None:
    (_, gone), (kept_id, kept) = sign_in(db, "gone@example.com"), sign_in(db, "kept@example.com")
    checker = SessionChecker(db, TTL_S)
    leaving = asyncio.create_task(checker.check(gone))
    staying = asyncio.create_task(checker.check(kept))
    await asyncio.sleep(0)
    leaving.cancel()
    answer = await staying
    assert answer is not None and answer.id == kept_id
    assert leaving.cancelled()


async def test_owners_of_a_burst_of_conversations_are_one_query(db: Database) -> None:
    (mine, _), (theirs, _) = sign_in(db, "me@example.com"), sign_in(db, "them@example.com")
    with db.session() as s:
        made = [Conversation(user_id=mine) for _ in range(10)] + [Conversation(user_id=theirs)]
        s.add_all(made)
        s.flush()
        *convs, other = [c.id for c in made]
    statements = Statements(db)
    checker = OwnerChecker(db)
    asks = [*convs, other, "no-such-conversation", "x" * 100]
    results = await asyncio.gather(
        *(checker.check(mine, conv) for conv in asks), return_exceptions=True
    )
    assert results[:10] == [None] * 10
    assert all(isinstance(r, NotFound) for r in results[10:])  # another's looks like none
    assert statements.count("SELECT") == 1


async def test_an_unstorable_id_is_not_found_and_the_rest_of_its_batch_answered(
    db: Database,
) -> None:
    """PostgreSQL refuses NUL in text: sent in a batch's query it would fail the whole batch."""
    mine, _ = sign_in(db, "nul@example.com")
    with db.session() as s:
        conv = Conversation(user_id=mine)
        s.add(conv)
        s.flush()
        conv_id = conv.id
    statements = Statements(db)
    checker = OwnerChecker(db)
    bad, good = await asyncio.gather(
        checker.check(mine, "a\x00b"), checker.check(mine, conv_id), return_exceptions=True
    )
    assert isinstance(bad, NotFound) and good is None
    assert statements.count("SELECT") == 1
