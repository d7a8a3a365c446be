"""A turn's answer in the database: one assistant row per turn, written while it streams and
once more at the end, and closed as interrupted when the actor writing it died."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from actors.turn import Turn
from chatdf.db import Conversation, Database, Message, utcnow
from chatdf.errors import ChatdfError
from chatdf.store import message_json, owned_conversation, touch

log = logging.getLogger(__name__)

# Appended to an answer whose actor died while it streamed (closed by the user's next actor).
ANSWER_INTERRUPTED = "(This answer was interrupted before it finished.)"


class Answers:
    """One user's assistant rows (the database calls block: run them in a thread)."""

    def __init__(self, user_id: str, db: Database, save_interval_s: float) -> None:
        self.user_id = user_id
        self.db = db
        self.save_interval_s = save_interval_s

    def close_orphaned(self) -> int:
        """Answers a previous actor was still streaming when it died end as interrupted: what
        was saved stays, with ANSWER_INTERRUPTED after it (the contract has no status field)."""
        with self.db.session() as s:
            owned = select(Conversation.id).where(Conversation.user_id == self.user_id)
            rows = s.scalars(
                select(Message).where(
                    Message.in_progress.is_(True), Message.conversation_id.in_(owned)
                )
            ).all()
            for msg in rows:
                kept = msg.content.rstrip()
                msg.content = f"{kept}\n\n{ANSWER_INTERRUPTED}" if kept else ANSWER_INTERRUPTED
                msg.in_progress = None
            return len(rows)

    async def save_while_streaming(
        self, conversation_id: str, message_id: str, runner: Turn, finished: asyncio.Event
    ) -> None:
        """Saves the answer so far every TURN_SAVE_INTERVAL_S while it grows (one write per
        interval, not per token), into the row the final save completes, so an actor that dies
        mid-turn loses at most the last interval. Nothing is saved before the first text."""
        interval = self.save_interval_s
        if interval <= 0:
            return
        last: tuple[int, int, int] | None = None
        while True:
            try:
                async with asyncio.timeout(interval):
                    await finished.wait()
            except TimeoutError:
                pass
            if finished.is_set():
                return
            answer = runner.partial()
            grown = (len(answer["content"]), len(answer["tool_rounds"]), answer["token_count"])
            if not answer["content"] or grown == last:
                continue
            try:
                await asyncio.to_thread(self.write, conversation_id, message_id, answer, True)
                last = grown
            except Exception:  # the final save still comes; a missed checkpoint costs little
                log.warning("could not save the streamed answer in %s", conversation_id)

    async def save(
        self, conversation_id: str, message_id: str, result: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Saves the assistant message however the turn ended (a shielded write)."""
        return await asyncio.shield(
            asyncio.to_thread(self.write, conversation_id, message_id, result, False)
        )

    def write(
        self,
        conversation_id: str,
        message_id: str,
        result: Mapping[str, Any],
        in_progress: bool,
    ) -> dict[str, Any] | None:
        """Writes the turn's one assistant row: created by its first save (streamed or final),
        updated by the later ones. None: the conversation was deleted while the turn ran."""
        with self.db.session() as s:
            try:
                conv = owned_conversation(s, self.user_id, conversation_id)
            except ChatdfError:
                return None
            msg = s.get(Message, message_id)
            if msg is None:
                msg = Message(
                    id=message_id, conversation_id=conv.id, role="assistant", created_at=utcnow()
                )
                s.add(msg)
            msg.content = result.get("content", "")
            msg.sql_query = result.get("sql_query")
            msg.token_count = int(result.get("token_count", 0))
            msg.tool_rounds = json.dumps(result.get("tool_rounds") or [])
            msg.in_progress = True if in_progress else None
            if not in_progress:
                touch(conv)
            s.flush()
            return message_json(msg)
