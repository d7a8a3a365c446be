# ruff: noqa: F811 - test arguments name the fixtures imported from tests.fakes.fake_openai
"""OpenAIClient through the real openai SDK against FakeOpenAI: streaming, tool calls, usage,
retries, errors and timeouts, with the same sentences as Gemini's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from actors.conversation import ModelTurn, ToolCall, ToolResult, ToolResults, UserText
from actors.gemini import tool_declarations
from actors.llm import (
    CONTEXT_TOO_LARGE,
    MODEL_BUSY,
    MODEL_FAILED,
    MODEL_REFUSED,
    MODEL_STALLED,
    NO_MODEL_NAME,
    NO_OPENAI_MODEL,
    ContextTooLong,
    ModelFailed,
    Usage,
    make_client,
)
from actors.openai_model import NO_KEY, OpenAIClient
from chatdf.errors import Unavailable
from chatdf.settings import Settings
from tests.actors.test_llm import Recorder
from tests.fakes.fake_openai import (  # noqa: F401 - fixtures
    API_KEY,
    MODEL,
    FakeOpenAI,
    _chunk,
    fake_openai,
    openai_settings,
    usage_chunk,
)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(openai_settings: Settings, rec: Recorder) -> AsyncIterator[OpenAIClient]:
    llm = OpenAIClient(openai_settings, sleep=rec.sleep)
    yield llm
    await llm.aclose()


async def ask(client: OpenAIClient, rec: Recorder, tools: bool = True):  # type: ignore[no-untyped-def]
    return await client.generate(
        "SYSTEM", [UserText("hi")], tools_enabled=tools, on_text=rec.on_text, on_usage=rec.on_usage
    )


async def test_streams_text_chunks_in_order_and_counts_usage(
    client: OpenAIClient, rec: Recorder, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_text("Hello world, here we go", chunks=3, usage=(11, 7))
    reply = await ask(client, rec)
    assert rec.texts == ["Hello wo", "rld, her", "e we go"]
    assert reply.text == "Hello world, here we go" and reply.calls == []
    # The fake sends the usage chunk only when asked (stream_options.include_usage).
    assert rec.usage == [Usage(11, 7)] and reply.usage == Usage(11, 7)


async def test_request_carries_model_key_system_tools_and_tool_choice(
    client: OpenAIClient, rec: Recorder, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_text("ok")
    fake_openai.script_text("ok")
    await ask(client, rec)
    await ask(client, rec, tools=False)
    first, second = fake_openai.requests
    assert first.path == "/v1/chat/completions"
    assert first.body["model"] == MODEL and first.body["stream"] is True
    assert first.body["stream_options"] == {"include_usage": True}
    assert first.headers["authorization"] == f"Bearer {API_KEY}"
    assert first.messages == [
        {"role": "system", "content": "SYSTEM"},
        {"role": "user", "content": "hi"},
    ]
    assert first.tool_choice == "auto" and second.tool_choice == "none"
    assert second.tool_names == first.tool_names == ["execute_sql", "load_dataset"]


def test_tools_are_the_same_as_geminis() -> None:
    """One definition (actors/conversation.py) for both providers' declarations."""
    from actors.openai_model import tool_params

    [gemini] = tool_declarations()
    for ours, theirs in zip(tool_params(), gemini.function_declarations or [], strict=True):
        assert theirs.parameters is not None
        function = ours["function"]
        assert (function["name"], function.get("description")) == (theirs.name, theirs.description)
        schema = dict(function.get("parameters") or {})
        assert schema["required"] == theirs.parameters.required
        properties = theirs.parameters.properties or {}
        assert schema["properties"] == {
            name: {"type": "string", "description": prop.description}
            for name, prop in properties.items()
        }


async def test_tool_calls_are_assembled_from_streamed_fragments(
    client: OpenAIClient, rec: Recorder, fake_openai: FakeOpenAI
) -> None:
    url = "http://127.0.0.1:9/cities.csv"
    fake_openai.script_tool_call(
        "execute_sql",
        {"query": "SELECT region, SUM(x) FROM t GROUP BY 1"},
        text="Let me check.",
        call_id="call_a",
        extra_calls=[("load_dataset", {"url": url})],
        pieces=4,
    )
    reply = await ask(client, rec)
    assert rec.texts == ["Let me check."]
    assert reply.calls == [
        ToolCall("execute_sql", {"query": "SELECT region, SUM(x) FROM t GROUP BY 1"}, "call_a"),
        ToolCall("load_dataset", {"url": url}, "call_a_1"),
    ]
    assert reply.turn == ModelTurn(text="Let me check.", calls=tuple(reply.calls))
    assert rec.usage == [Usage(20, 8)]


async def test_whole_calls_at_one_index_and_bad_arguments(
    client: OpenAIClient, rec: Recorder, fake_openai: FakeOpenAI
) -> None:
    """Some servers send each call whole, all at index 0; broken JSON becomes no arguments."""

    def whole(call_id: str, name: str, arguments: str) -> dict[str, object]:
        call = {"index": 0, "id": call_id, "type": "function"}
        call["function"] = {"name": name, "arguments": arguments}
        return _chunk({"tool_calls": [call]})

    fake_openai.script_chunks(
        [
            whole("c1", "execute_sql", '{"query": "SELECT 1"}'),
            whole("c2", "execute_sql", '{"query": "SELECT'),
            _chunk({}, finish="tool_calls"),
        ],
        usage=(5, 5),
    )
    reply = await ask(client, rec)
    assert reply.calls == [
        ToolCall("execute_sql", {"query": "SELECT 1"}, "c1"),
        ToolCall("execute_sql", {}, "c2"),
    ]


async def test_history_replays_calls_and_results_with_matching_ids(
    client: OpenAIClient, rec: Recorder, fake_openai: FakeOpenAI
) -> None:
    stored = ToolCall("execute_sql", {"query": "SELECT 1"})  # a stored round: no id
    live = ToolCall("execute_sql", {"query": "SELECT 2"}, id="call_live", signature=b"sig")
    contents: list[UserText | ModelTurn | ToolResults] = [
        UserText("how many?"),
        ModelTurn(calls=(stored,)),
        ToolResults((ToolResult(stored, {"rows": [[1]]}),)),
        ModelTurn(text="One."),
        UserText("and now?"),
        ModelTurn(text="Checking.", calls=(live,)),
        ToolResults((ToolResult(live, {"rows": [[2]]}),)),
    ]
    fake_openai.script_text("Two.")
    await client.generate(
        "S", contents, tools_enabled=True, on_text=rec.on_text, on_usage=rec.on_usage
    )
    request = fake_openai.requests[0]
    assert [m["role"] for m in request.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "tool",
    ]
    first, second = request.tool_calls()
    assert first["id"] == "call_0" and second["id"] == "call_live"
    assert json.loads(first["function"]["arguments"]) == {"query": "SELECT 1"}
    assert second["extra_content"] == {"google": {"thought_signature": "sig"}}
    assert request.messages[2]["content"] is None
    assert request.tool_results() == [
        {"tool_call_id": "call_0", "result": {"rows": [[1]]}},
        {"tool_call_id": "call_live", "result": {"rows": [[2]]}},
    ]
    assert request.texts() == ["how many?", "One.", "and now?", "Checking."]


async def test_429_then_503_are_retried_with_backoff(
    client: OpenAIClient, rec: Recorder, fake_openai: FakeOpenAI, openai_settings: Settings
) -> None:
    fake_openai.script_error(429, "Rate limit reached")
    fake_openai.script_error(503, "Service unavailable")
    fake_openai.script_text("fine")
    reply = await ask(client, rec)
    assert reply.text == "fine" and len(fake_openai.requests) == 3
    base = openai_settings.llm_backoff_s
    assert rec.sleeps == [base, base * 2]  # ours: the SDK's own retries are off
    assert rec.usage == [Usage(10, 5)]


async def test_500_exhausts_retries_then_fails(
    client: OpenAIClient, rec: Recorder, fake_openai: FakeOpenAI, openai_settings: Settings
) -> None:
    for _ in range(openai_settings.llm_max_retries + 1):
        fake_openai.script_error(500)
    with pytest.raises(ModelFailed) as info:
        await ask(client, rec)
    assert info.value.error == MODEL_FAILED and info.value.status == 502
    assert len(fake_openai.requests) == openai_settings.llm_max_retries + 1
    assert fake_openai.pending() == 0


async def test_429_exhausted_says_busy(
    openai_settings: Settings, rec: Recorder, fake_openai: FakeOpenAI
) -> None:
    client = OpenAIClient(openai_settings.model_copy(update={"llm_max_retries": 0}))
    fake_openai.script_error(429)
    with pytest.raises(ModelFailed) as info:
        await ask(client, rec)
    assert info.value.error == MODEL_BUSY
    await client.aclose()


async def test_bad_request_is_not_retried(
    client: OpenAIClient, rec: Recorder, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_error(404, "model 'fake-model' not found", "model_not_found")
    with pytest.raises(ModelFailed) as info:
        await ask(client, rec)
    assert info.value.error == MODEL_REFUSED
    assert "not found" in (info.value.details or "")
    assert len(fake_openai.requests) == 1


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (None, "context_length_exceeded"),  # OpenAI: the code says it
        ("This model's maximum context length is 4096 tokens.", None),  # vLLM: the message
        ("the request exceeds the available context size, try increasing it", None),  # llama.cpp
    ],
)
async def test_context_too_long_is_its_own_error(
    client: OpenAIClient, rec: Recorder, fake_openai: FakeOpenAI, message: str, code: str
) -> None:
    fake_openai.script_error(400, message or "Invalid request", code)
    with pytest.raises(ContextTooLong) as info:
        await ask(client, rec)
    assert info.value.error == CONTEXT_TOO_LARGE
    assert len(fake_openai.requests) == 1


async def test_connection_dropped_before_any_text_is_retried(
    client: OpenAIClient, rec: Recorder, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_text("lost", drop_after=0)
    fake_openai.script_text("again")
    reply = await ask(client, rec)
    assert reply.text == "again" and "".join(rec.texts) == "again"
    assert len(fake_openai.requests) == 2


async def test_failure_after_text_streamed_is_not_retried(
    client: OpenAIClient, rec: Recorder, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script_text("Half an answer", chunks=2, drop_after=1)
    fake_openai.script_text("never sent")
    with pytest.raises(ModelFailed) as info:
        await ask(client, rec)
    assert info.value.error == MODEL_FAILED
    assert rec.texts == ["Half an"]
    assert len(fake_openai.requests) == 1 and fake_openai.pending() == 1


async def test_a_stalled_stream_times_out_with_the_sentence(
    openai_settings: Settings, rec: Recorder, fake_openai: FakeOpenAI
) -> None:
    settings = openai_settings.model_copy(
        update={"model_read_timeout_s": 0.5, "llm_max_retries": 0}
    )
    client = OpenAIClient(settings, sleep=rec.sleep)
    held = fake_openai.script_text("First half, second half", chunks=2, hold_after=1)
    with pytest.raises(ModelFailed) as info:
        await ask(client, rec)
    held.release()
    assert info.value.error == MODEL_STALLED.format(seconds="0.5")
    assert rec.texts == ["First half, "]
    await client.aclose()


async def test_cancelling_closes_the_stream(
    client: OpenAIClient, rec: Recorder, fake_openai: FakeOpenAI
) -> None:
    held = fake_openai.script_text("First half, second half", chunks=2, hold_after=1)
    task = asyncio.get_running_loop().create_task(ask(client, rec))
    await asyncio.to_thread(held.wait_reached)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    held.release()
    # The server's write fails or finishes; either way its handler ends.
    assert await asyncio.to_thread(held.finished.wait, 10)


def test_no_key_and_no_base_url_names_the_settings(openai_settings: Settings) -> None:
    settings = openai_settings.model_copy(
        update={"model_api_key": SecretStr(""), "model_base_url": ""}
    )
    assert not settings.llm_configured
    with pytest.raises(Unavailable) as info:
        make_client(settings)
    assert info.value.error == NO_OPENAI_MODEL
    assert "MODEL_BASE_URL" in info.value.error and "MODEL_API_KEY" in info.value.error
    with pytest.raises(Unavailable) as named:
        OpenAIClient(openai_settings.model_copy(update={"model_name": ""}))
    assert named.value.error == NO_MODEL_NAME


async def test_a_local_server_needs_no_key(
    openai_settings: Settings, rec: Recorder, fake_openai: FakeOpenAI
) -> None:
    settings = openai_settings.model_copy(update={"model_api_key": SecretStr("")})
    assert settings.llm_configured
    client = make_client(settings)
    assert isinstance(client, OpenAIClient)
    fake_openai.script_text("local")
    reply = await client.generate(
        "S", [UserText("hi")], tools_enabled=True, on_text=rec.on_text, on_usage=rec.on_usage
    )
    assert reply.text == "local"
    assert fake_openai.requests[0].headers["authorization"] == f"Bearer {NO_KEY}"
    await client.aclose()


def test_model_settings_override_gemini_ones(settings: Settings) -> None:
    gemini = settings.model_copy(
        update={"gemini_api_key": SecretStr("g-key"), "gemini_base_url": "http://g"}
    )
    assert (gemini.resolved_model_api_key, gemini.resolved_model_name) == (
        "g-key",
        "gemini-2.5-flash",
    )
    assert gemini.resolved_model_base_url == "http://g"
    both = gemini.model_copy(
        update={
            "model_api_key": SecretStr("m-key"),
            "model_name": "gemini-2.5-pro",
            "model_base_url": "http://m",
        }
    )
    assert (both.resolved_model_api_key, both.resolved_model_name) == ("m-key", "gemini-2.5-pro")
    assert both.resolved_model_base_url == "http://m"
    # The openai provider never reads GEMINI_*.
    other = gemini.model_copy(update={"model_provider": "openai"})
    assert (other.resolved_model_api_key, other.resolved_model_name) == ("", "")
    assert not other.llm_configured
