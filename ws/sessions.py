"""Sockets end with their sign-in session: at logout at once, on any edge within an interval."""

from __future__ import annotations

import asyncio
import logging

from chatdf.db import Database
from chatdf.store import live_token_hashes
from ws.connections import ConnectionManager
from ws.endpoint import CLOSE_UNAUTHORIZED

log = logging.getLogger(__name__)


async def watch_sessions(manager: ConnectionManager, db: Database, interval_s: float) -> None:
    """Every `interval_s`, one query for all this edge's sockets: those whose session was
    logged out (on any edge) or has expired are closed with 4001."""
    while True:
        await asyncio.sleep(interval_s)
        hashes = manager.open_token_hashes()
        if not hashes:
            continue
        try:
            live = await asyncio.to_thread(_live, db, hashes)
        except Exception:  # the database busy or down: check again next time, close nothing
            log.warning("could not check the sessions of open sockets", exc_info=True)
            continue
        ended = hashes - live
        if ended:
            closed = await manager.close_sessions(ended, CLOSE_UNAUTHORIZED, "session ended")
            log.info("closed %d socket(s) whose session ended", closed)


def _live(db: Database, hashes: set[str]) -> set[str]:
    with db.session() as s:
        return live_token_hashes(s, hashes)
