"""The database checks of concurrent requests and sockets (their sign-in, their conversation's
owner), answered together: one query a batch.

A burst of 200 sockets opening at once (or many REST calls) used to mean 200 one-row queries on
the loop's ten database threads: on 2 cores ≈ 1 ms of CPU each with the threads contending for
the GIL, against ≈ 0.35 ms alone. Coalesced (chatdf/coalesce.py), a batch of 200 tokens is one
`IN` query of ≈ 2 ms, and a lone check is one query, as before.

The sliding expiry (a session is extended on use, at most once a minute) is written after the
check has answered, coalesced the same way, so a write waiting on a busy SQLite file never holds
up a sign-in; an extension that fails is logged and tried again on the next use.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from chatdf.coalesce import Coalescer
from chatdf.db import Database
from chatdf.errors import NotFound
from chatdf.store import (
    MAX_TOKEN_CHARS,
    conversation_owners,
    extend_sessions,
    live_sessions,
    sessions_due_extension,
)

log = logging.getLogger(__name__)

MAX_BATCH = 500  # keys per query: well under any SQL engine's bound on parameters


@dataclass(frozen=True)
class AuthUser:
    """A signed-in user, and the session token they presented."""

    id: str
    email: str
    token: str


class SessionChecker:
    """`await check(token)`: the signed-in user, or None; database errors reach the caller."""

    def __init__(self, db: Database, ttl_s: int) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._reads = Coalescer(self._look_up, max_batch=MAX_BATCH)
        self._extensions = Coalescer(self._extend, max_batch=MAX_BATCH)
        self._writes: set[asyncio.Task[Any]] = set()

    async def check(self, token: str) -> AuthUser | None:
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        found = await self._reads.ask(token)
        if found is None:
            return None
        user, due_session = found
        if due_session:
            write = asyncio.create_task(self._extend_later(due_session))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)
        return user

    async def written(self) -> None:
        """Waits for the session extensions being written (at shutdown, and for tests)."""
        while self._writes:
            await asyncio.gather(*self._writes)

    def _look_up(self, tokens: list[str]) -> dict[str, tuple[AuthUser, str]]:
        """By token: the user, and the session's id if its expiry is due to move (else "")."""
        with self.db.session() as s:
            found = live_sessions(s, tokens)
        due = set(sessions_due_extension((row for row, _ in found.values()), self.ttl_s))
        return {
            token: (AuthUser(user.id, user.email, token), row.id if row.id in due else "")
            for token, (row, user) in found.items()
        }

    async def _extend_later(self, session_id: str) -> None:
        try:
            await self._extensions.ask(session_id)
        except Exception as exc:
            log.warning("could not extend a session (%s); its next use tries again", exc)

    def _extend(self, session_ids: list[str]) -> dict[str, None]:
        with self.db.session() as s:
            extend_sessions(s, session_ids, self.ttl_s)
        return {}


class OwnerChecker:
    """`await check(user_id, conversation_id)`: NotFound (404) unless the conversation exists
    and is the user's; one query for the conversations of concurrent requests."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._owners = Coalescer(self._look_up, max_batch=MAX_BATCH)

    async def check(self, user_id: str, conversation_id: str) -> None:
        if await self._owners.ask(conversation_id) != user_id:
            raise NotFound("Conversation not found")  # never reveals that it is another's

    def _look_up(self, conversation_ids: list[str]) -> dict[str, str]:
        with self.db.session() as s:
            return conversation_owners(s, conversation_ids)
