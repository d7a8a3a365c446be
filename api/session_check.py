"""Sign-in checks of concurrent requests and sockets, answered together: one query a batch.

A burst of 200 sockets opening at once (or many REST calls) used to mean 200 threads' worth of
one-row queries: on 2 cores ≈ 1 ms CPU each with the threads contending for the GIL, against
≈ 0.35 ms alone. Here the checks that arrive while one batch is being looked up wait for the next
batch, and a batch of 200 tokens is one `IN` query of ≈ 2 ms. A lone check costs what it did:
one query on the loop's default executor.

The sliding expiry (a session is extended on use, at most once a minute) is written after the
batch's callers have their answer, so a write waiting on a busy SQLite file never holds up a
sign-in check; an extension that fails is logged and tried again on the next use.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from api.deps import AuthUser
from chatdf.db import Database
from chatdf.store import MAX_TOKEN_CHARS, extend_sessions, live_sessions, sessions_due_extension

log = logging.getLogger(__name__)

MAX_BATCH = 500  # tokens per query: well under any SQL engine's bound on parameters


class SessionChecker:
    """`await check(token)`: the signed-in user, or None; database errors reach the caller."""

    def __init__(self, db: Database, ttl_s: int) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._waiting: dict[str, list[asyncio.Future[AuthUser | None]]] = {}
        self._drainer: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[Any]] = set()

    async def check(self, token: str) -> AuthUser | None:
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        answer: asyncio.Future[AuthUser | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(token, []).append(answer)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await answer

    async def written(self) -> None:
        """Waits for the session extensions being written (at shutdown, and for tests)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def _drain(self) -> None:
        """Looks up what is waiting, a batch at a time, until nothing is."""
        while self._waiting:
            tokens = list(self._waiting)[:MAX_BATCH]
            batch = {token: self._waiting.pop(token) for token in tokens}
            try:
                users, due = await asyncio.to_thread(self._look_up, tokens)
            except Exception as exc:  # the database locked or down: each caller decides
                for answers in batch.values():
                    for answer in answers:
                        if not answer.done():
                            answer.set_exception(exc)
                continue
            for token, answers in batch.items():
                for answer in answers:
                    if not answer.done():  # a caller that went away
                        answer.set_result(users.get(token))
            if due:
                write = asyncio.create_task(asyncio.to_thread(self._extend, due))
                self._writes.add(write)
                write.add_done_callback(self._writes.discard)

    def _look_up(self, tokens: list[str]) -> tuple[dict[str, AuthUser], list[str]]:
        with self.db.session() as s:
            found = live_sessions(s, tokens)
        users = {token: AuthUser(user.id, user.email, token) for token, (_, user) in found.items()}
        due = sessions_due_extension((row for row, _ in found.values()), self.ttl_s)
        return users, due

    def _extend(self, session_ids: list[str]) -> None:
        try:
            with self.db.session() as s:
                extend_sessions(s, session_ids, self.ttl_s)
        except Exception:
            log.warning("could not extend %d session(s); next use tries again", len(session_ids))
