"""ChatRunner without Ray: a stop that lands before the turn starts still ends the turn cleanly."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import SecretStr

from actors.budget import TokenBudget
from actors.chat import ChatRunner
from actors.datasets import DatasetLoader
from chatdf.db import Conversation, Database, User
from chatdf.settings import Settings


def runner_for(settings: Settings) -> tuple[ChatRunner, list[dict[str, Any]], str]:
    db = Database(settings.resolved_database_url)
    db.create_schema()
    with db.session() as s:
        user = User(email="runner@example.com")
        s.add(user)
        s.flush()
        conv = Conversation(user_id=user.id)
        s.add(conv)
        s.flush()
        user_id, conv_id = user.id, conv.id
    published: list[dict[str, Any]] = []

    async def publish(event: dict[str, Any]) -> None:
        published.append(event)

    budget = TokenBudget(user_id, settings, db)
    loader = DatasetLoader(user_id, settings, db, publish)
    return ChatRunner(user_id, settings, db, publish, budget, loader), published, conv_id


async def test_stop_right_after_post_ends_the_turn_and_frees_the_conversation(
    settings: Settings,
) -> None:
    keyed = settings.model_copy(update={"gemini_api_key": SecretStr("unused")})
    chat, published, conv = runner_for(keyed)
    started = await chat.post(conv, "hello")
    assert await chat.stop(conv)  # before the turn's task has run a single step
    assert chat.running_count() == 0
    done = [e for e in published if e["type"] == "chat_complete"]
    assert len(done) == 1 and done[0]["message_id"] == started["message_id"]
    assert done[0]["message"]["content"] == ""
    again = asyncio.create_task(chat.post(conv, "again"))  # not 409: the turn is gone
    assert (await again)["status"] == "processing"
    await chat.stop(conv)
