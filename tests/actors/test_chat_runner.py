"""ChatRunner without Ray: a stop that lands before the turn starts still ends the turn cleanly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import SecretStr

from actors.budget import TokenBudget
from actors.chat import ChatRunner
from actors.datasets import DatasetLoader
from actors.llm import MODEL_STALLED
from chatdf.db import Conversation, Database, User
from chatdf.settings import Settings
from tests.fakes.fake_gemini import FakeGemini


def runner_for(
    settings: Settings, busy_timeout_s: float = 30.0
) -> tuple[ChatRunner, list[dict[str, Any]], str]:
    db = Database(settings.resolved_database_url, busy_timeout_s=busy_timeout_s)
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


# Every turn ends: a stalled model, a turn past its deadline, a save that fails (issue 11) -----


def terminal(published: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in published if e["type"] in ("chat_complete", "chat_error")]


def saved_answer(settings: Settings, conv: str) -> str | None:
    from sqlalchemy import select

    from chatdf.db import Message

    db = Database(settings.resolved_database_url)
    with db.session() as s:
        row = s.scalar(
            select(Message).where(Message.conversation_id == conv, Message.role == "assistant")
        )
        return row.content if row is not None else None


async def run_turn(chat: ChatRunner, conv: str, text: str = "hi") -> None:
    await chat.post(conv, text)
    task = chat._turns[conv].task
    assert task is not None
    await task


async def held_turn(
    settings: Settings, fake_gemini: FakeGemini, hold_after: int
) -> tuple[dict[str, Any], str, str | None]:
    """A turn whose model stream stops after `hold_after` chunks: its one terminal event, the
    text that streamed, and the answer saved."""
    chat, published, conv = runner_for(settings)
    reply = fake_gemini.script_text("one two three", chunks=3, hold_after=hold_after)
    try:
        await run_turn(chat, conv)
    finally:
        reply.release()
    (end,) = terminal(published)
    assert chat.running_count() == 0  # the conversation takes a new message (no 409)
    streamed = "".join(e["token"] for e in published if e["type"] == "chat_token")
    return end, streamed, saved_answer(settings, conv)


async def test_a_stalled_model_stream_ends_the_turn_with_its_partial_saved(
    gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    settings = gemini_settings.model_copy(update={"model_read_timeout_s": 0.5})
    end, streamed, saved = await held_turn(settings, fake_gemini, hold_after=2)
    assert (end["type"], end["error"]) == ("chat_error", MODEL_STALLED.format(seconds="0.5"))
    assert streamed and saved == streamed


async def test_a_turn_past_its_deadline_ends_with_its_partial_saved(
    gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    settings = gemini_settings.model_copy(update={"turn_timeout_s": 0.5})
    end, streamed, saved = await held_turn(settings, fake_gemini, hold_after=1)
    assert end["type"] == "chat_error"
    assert end["error"] == "The answer took longer than 0.5 seconds and was stopped"
    assert streamed and saved == streamed


async def test_a_save_that_fails_still_ends_the_turn_with_one_terminal_event(
    gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """The database locked by another process when the answer is saved: a chat_error, once
    (the failure used to escape the error branch and leave the client waiting forever)."""
    import sqlite3

    chat, published, conv = runner_for(gemini_settings, busy_timeout_s=0.2)
    reply = fake_gemini.script_text("one two three", chunks=3, hold_after=2)
    await chat.post(conv, "hi")
    task = chat._turns[conv].task
    assert task is not None
    await asyncio.to_thread(reply.reached.wait, 10)  # the turn is streaming, nothing saved yet
    locker = sqlite3.connect(gemini_settings.resolved_database_url.removeprefix("sqlite:///"))
    locker.execute("BEGIN EXCLUSIVE")
    try:
        reply.release()
        await task
    finally:
        locker.rollback()
        locker.close()
    (end,) = terminal(published)
    assert end["type"] == "chat_error"
    assert chat.running_count() == 0


# Caps that hold: concurrent turns per user, budget reservations (issue 11) -----------------


def more_conversations(settings: Settings, chat: ChatRunner, count: int) -> list[str]:
    db = Database(settings.resolved_database_url)
    with db.session() as s:
        convs = [Conversation(user_id=chat.user_id) for _ in range(count)]
        s.add_all(convs)
        s.flush()
        return [c.id for c in convs]


async def test_concurrent_turns_per_user_are_capped(
    gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    from chatdf.errors import TooManyRequests

    settings = gemini_settings.model_copy(update={"max_concurrent_turns_per_user": 2})
    chat, _published, conv = runner_for(settings)
    others = more_conversations(settings, chat, 2)
    held = [fake_gemini.script_text("a b", chunks=2, hold_after=1) for _ in range(2)]
    try:
        await chat.post(conv, "one")
        await chat.post(others[0], "two")
        with pytest.raises(TooManyRequests, match="2 answers are being generated already"):
            await chat.post(others[1], "three")
        assert chat.running_count() == 2
    finally:
        for reply in held:
            reply.release()
        await chat.stop(conv)
        await chat.stop(others[0])


async def test_running_turns_hold_budget_so_a_user_near_the_limit_cannot_fan_out(
    gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """Limit 1,000 tokens, each running turn holding 1,000: the first turn starts (nothing
    spent), a second one at the same time is refused although nothing is spent yet."""
    from chatdf.errors import TooManyRequests

    settings = gemini_settings.model_copy(
        update={"token_limit": 1_000, "turn_token_reserve": 1_000}
    )
    chat, _published, conv = runner_for(settings)
    (other,) = more_conversations(settings, chat, 1)
    held = fake_gemini.script_text("a b", chunks=2, hold_after=1)
    try:
        await chat.post(conv, "one")
        with pytest.raises(TooManyRequests, match="may use the rest of your daily token budget"):
            await chat.post(other, "two")
    finally:
        held.release()
        await chat.stop(conv)


async def test_one_model_client_serves_every_turn_of_the_actor(settings: Settings) -> None:
    """Issue 9: the SDK client is built at the first turn and kept warm for the next ones."""
    from actors.openai_model import OpenAIClient
    from tests.fakes.fake_openai import FakeOpenAI

    with FakeOpenAI() as fake:
        local = settings.model_copy(
            update={"model_provider": "openai", "model_base_url": fake.base_url, "model_name": "m"}
        )
        chat, published, conv = runner_for(local)
        fake.script_text("first", chunks=1)
        fake.script_text("second", chunks=1)
        await run_turn(chat, conv, "one")
        client = chat.llm()
        await run_turn(chat, conv, "two")
        assert chat.llm() is client and isinstance(client, OpenAIClient)
        done = [e["message"]["content"] for e in terminal(published)]
        assert done == ["first", "second"] and len(fake.requests) == 2


async def test_a_second_turn_sends_the_earlier_exchange_and_the_new_message_once(
    gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """The message's save reads the turn's context in the same session (before its insert):
    the model sees the history before the message, then the message, each once."""
    chat, published, conv = runner_for(gemini_settings)
    fake_gemini.script_text("first answer", chunks=2)
    fake_gemini.script_text("second answer", chunks=2)
    await run_turn(chat, conv, "first question")
    await run_turn(chat, conv, "second question")
    assert [e["message"]["content"] for e in terminal(published)] == [
        "first answer",
        "second answer",
    ]
    second = fake_gemini.requests[-1]
    assert "".join(second.texts("user")).count("second question") == 1
    assert [("".join(second.texts(role))) for role in ("user", "model")] == [
        "first questionsecond question",
        "first answer",
    ]
