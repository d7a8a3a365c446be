# ruff: noqa: F811 - test arguments name the fixtures imported from tests.fakes.fake_openai
"""The same tool loop with MODEL_PROVIDER=openai: the real openai SDK against FakeOpenAI and
real Polars SQL; phases, tokens, tool results, usage and the too-long retry as for Gemini."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from actors.llm import CONTEXT_TOO_LARGE, ContextTooLong
from actors.openai_model import OpenAIClient
from actors.turn import SKIPPED_CALL
from chatdf.settings import Settings
from tests.actors.test_turn import Harness, talk
from tests.fakes.fake_openai import (  # noqa: F401 - fixtures
    FakeOpenAI,
    fake_openai,
    openai_settings,
)


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
async def llm(openai_settings: Settings) -> AsyncIterator[OpenAIClient]:
    client = OpenAIClient(openai_settings)
    yield client
    await client.aclose()


async def test_text_answer_streams_tokens(
    h: Harness, llm: OpenAIClient, openai_settings: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_text("Hello there, world", chunks=3, usage=(10, 5))
    result = await h.turn(openai_settings, llm).run()
    assert h.trace() == ["generating", "token:Hello ", "token:there,", "token: world"]
    assert result["content"] == "Hello there, world" and result["token_count"] == 15
    assert h.usage == [(10, 5)]
    request = fake_openai.requests[0]
    assert "sales (3 rows" in request.system_text
    assert request.texts("user") == ["What is the total per region?"]


async def test_sql_tool_call_runs_and_its_result_goes_back_under_the_call_id(
    h: Harness, llm: OpenAIClient, openai_settings: Settings, fake_openai: FakeOpenAI
) -> None:
    sql = "SELECT region, SUM(amount) AS total FROM sales GROUP BY region ORDER BY region"
    fake_openai.script_sql(sql, text="Let me check.", call_id="call_9", usage=(20, 8))
    fake_openai.script_text("a: 4, b: 2", chunks=1, usage=(40, 6))
    result = await h.turn(openai_settings, llm).run()
    assert h.trace() == [
        "generating",
        "token:Let me check.",
        "executing",
        "formatting",
        "token:\n\n",
        "token:a: 4, b: 2",
    ]
    assert result["sql_query"] == sql and h.queries == [sql]
    assert result["token_count"] == 74 and h.usage == [(20, 8), (40, 6)]
    second = fake_openai.requests[1]
    [call] = second.tool_calls()
    assert call["id"] == "call_9" and call["function"]["name"] == "execute_sql"
    assert json.loads(call["function"]["arguments"]) == {"query": sql}
    [sent] = second.tool_results()
    assert sent["tool_call_id"] == "call_9"
    assert sent["result"]["rows"] == [["a", 4.0], ["b", 2.0]]
    assert second.tool_choice == "auto"
    [round_] = result["tool_rounds"]
    assert round_ == {"name": "execute_sql", "args": {"query": sql}, "result": sent["result"]}


async def test_stored_rounds_replay_in_the_next_turn(
    h: Harness, llm: OpenAIClient, openai_settings: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_sql("SELECT COUNT(*) AS n FROM sales")
    fake_openai.script_text("There are 3 rows.")
    first = await h.turn(openai_settings, llm, text="How many rows?").run()
    history = [
        {"role": "user", "content": "How many rows?", "tool_rounds": []},
        {
            "role": "assistant",
            "content": first["content"],
            "tool_rounds": json.loads(json.dumps(first["tool_rounds"])),
        },
    ]
    fake_openai.script_text("Yes.")
    await h.turn(openai_settings, llm, history=history, text="Sure?").run()
    replay = fake_openai.requests[2]
    roles = [m["role"] for m in replay.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    [call] = replay.tool_calls()
    [result] = replay.tool_results()
    assert result["tool_call_id"] == call["id"]
    assert result["result"]["rows"] == [[3]]
    assert replay.texts() == ["How many rows?", "There are 3 rows.", "Sure?"]


async def test_calls_past_the_cap_are_answered_without_running(
    h: Harness, llm: OpenAIClient, openai_settings: Settings, fake_openai: FakeOpenAI
) -> None:
    settings = openai_settings.model_copy(update={"max_tool_calls": 1})
    q = "SELECT 1 AS n FROM sales LIMIT 1"
    fake_openai.script_sql(q, extra_calls=[("execute_sql", {"query": q})])
    fake_openai.script_text("Done.")
    result = await h.turn(settings, llm).run()
    assert len(h.queries) == 1
    last = fake_openai.requests[-1]
    assert last.tool_choice == "none"
    results = last.tool_results()
    assert [r["tool_call_id"] for r in results] == ["call_fake_1", "call_fake_1_1"]
    assert results[1]["result"]["error"] == SKIPPED_CALL
    assert "limit" in results[1]["result"]["instruction"]
    assert result["content"] == "Done."


async def test_too_long_context_retries_with_fewer_messages_then_fails(
    h: Harness, llm: OpenAIClient, openai_settings: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_too_long()
    fake_openai.script_text("Short enough now.")
    result = await h.turn(openai_settings, llm, history=talk(20), text="now").run()
    first, second = fake_openai.requests
    assert first.texts() == [f"m{i:03d}" for i in range(20)] + ["now"]
    assert second.texts() == [f"m{i:03d}" for i in range(10, 20)] + ["now"]
    assert result["content"] == "Short enough now."

    fake_openai.script_too_long()
    fake_openai.script_too_long()
    with pytest.raises(ContextTooLong) as info:
        await h.turn(openai_settings, llm, history=talk(20)).run()
    assert info.value.error == CONTEXT_TOO_LARGE
