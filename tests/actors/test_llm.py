# ruff: noqa: F811 - test arguments name the fixtures imported from tests.fakes.fake_gemini
"""GeminiClient through the real google-genai SDK against FakeGemini: streaming, retries, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from actors.conversation import UserText
from actors.gemini import GeminiClient
from actors.llm import (
    CONTEXT_TOO_LARGE,
    MODEL_BUSY,
    MODEL_FAILED,
    MODEL_REFUSED,
    NO_MODEL,
    ContextTooLong,
    ModelFailed,
    Usage,
)
from chatdf.errors import Unavailable
from chatdf.settings import Settings
from tests.fakes.fake_gemini import (  # noqa: F401 - fixtures
    FakeGemini,
    _candidate_chunk,
    fake_gemini,
    gemini_settings,
    usage_chunk,
)


class Recorder:
    """The client's callbacks, recording what they were given; sleeps return at once."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.usage: list[Usage] = []
        self.sleeps: list[float] = []

    async def on_text(self, text: str) -> None:
        self.texts.append(text)

    async def on_usage(self, usage: Usage) -> None:
        self.usage.append(usage)

    async def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(gemini_settings: Settings, rec: Recorder) -> AsyncIterator[GeminiClient]:
    llm = GeminiClient(gemini_settings, sleep=rec.sleep)
    yield llm
    await llm.aclose()


async def ask(client: GeminiClient, rec: Recorder, tools: bool = True):  # type: ignore[no-untyped-def]
    return await client.generate(
        "SYSTEM",
        [UserText("hi")],
        tools_enabled=tools,
        on_text=rec.on_text,
        on_usage=rec.on_usage,
    )


async def test_streams_text_chunks_in_order(
    client: GeminiClient, rec: Recorder, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_text("Hello world, here we go", chunks=3, usage=(11, 7))
    reply = await ask(client, rec)
    assert rec.texts == ["Hello wo", "rld, her", "e we go"]
    assert reply.text == "Hello world, here we go"
    assert reply.calls == []
    assert rec.usage == [Usage(11, 7)] and reply.usage == Usage(11, 7)


async def test_request_carries_system_tools_and_manual_function_calling(
    client: GeminiClient, rec: Recorder, fake_gemini: FakeGemini, gemini_settings: Settings
) -> None:
    fake_gemini.script_text("ok")
    fake_gemini.script_text("ok")
    await ask(client, rec)
    await ask(client, rec, tools=False)
    first, second = fake_gemini.requests
    assert first.method == "streamGenerateContent" and "alt=sse" in first.path
    assert first.model == gemini_settings.gemini_model == "gemini-2.5-flash"
    assert first.headers["x-goog-api-key"] == "fake-key"
    assert first.system_text == "SYSTEM"
    assert first.tool_names == ["execute_sql", "load_dataset"]
    assert first.function_calling_mode == "AUTO"
    assert second.function_calling_mode == "NONE"
    assert first.contents == [{"role": "user", "parts": [{"text": "hi"}]}]


async def test_function_call_keeps_its_thought_signature(
    client: GeminiClient, rec: Recorder, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_tool_call(
        "execute_sql", {"query": "SELECT 1"}, text="Let me check.", call_id="c1"
    )
    reply = await ask(client, rec)
    assert rec.texts == ["Let me check."]
    [call] = reply.calls
    assert call.name == "execute_sql"
    assert call.args == {"query": "SELECT 1"}
    assert call.id == "c1"
    assert call.signature == b"signature"
    assert reply.turn.text == "Let me check." and reply.turn.calls == (call,)


async def test_thinking_tokens_count_as_output_and_thoughts_are_not_streamed(
    client: GeminiClient, rec: Recorder, fake_gemini: FakeGemini
) -> None:
    thought = _candidate_chunk([{"text": "pondering", "thought": True}])
    answer = _candidate_chunk([{"text": "42"}], finish="STOP")
    answer["usageMetadata"] = usage_chunk(10, 2, thoughts=30)
    fake_gemini.script_chunks([thought, answer])
    reply = await ask(client, rec)
    assert rec.texts == ["42"] and reply.text == "42"
    assert rec.usage == [Usage(10, 32)]


async def test_429_is_retried_with_backoff(
    client: GeminiClient, rec: Recorder, fake_gemini: FakeGemini, gemini_settings: Settings
) -> None:
    fake_gemini.script_error(429)
    fake_gemini.script_error(503)
    fake_gemini.script_text("fine")
    reply = await ask(client, rec)
    assert reply.text == "fine"
    assert len(fake_gemini.requests) == 3
    base = gemini_settings.llm_backoff_s
    assert rec.sleeps == [base, base * 2]
    assert rec.usage == [Usage(10, 5)]  # refused calls carry no usage: nothing recorded


async def test_500_exhausts_retries_then_fails(
    client: GeminiClient, rec: Recorder, fake_gemini: FakeGemini, gemini_settings: Settings
) -> None:
    for _ in range(gemini_settings.llm_max_retries + 1):
        fake_gemini.script_error(500)
    with pytest.raises(ModelFailed) as info:
        await ask(client, rec)
    assert info.value.error == MODEL_FAILED and info.value.status == 502
    assert len(fake_gemini.requests) == gemini_settings.llm_max_retries + 1
    base = gemini_settings.llm_backoff_s
    assert rec.sleeps == [base, base * 2, base * 4]
    assert fake_gemini.pending() == 0


async def test_429_exhausted_says_busy(
    gemini_settings: Settings, rec: Recorder, fake_gemini: FakeGemini
) -> None:
    settings = gemini_settings.model_copy(update={"llm_max_retries": 0})
    client = GeminiClient(settings, sleep=rec.sleep)
    fake_gemini.script_error(429)
    with pytest.raises(ModelFailed) as info:
        await ask(client, rec)
    assert info.value.error == MODEL_BUSY
    assert rec.sleeps == []
    await client.aclose()


async def test_bad_request_is_not_retried(
    client: GeminiClient, rec: Recorder, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_error(400, "Invalid JSON payload")
    with pytest.raises(ModelFailed) as info:
        await ask(client, rec)
    assert info.value.error == MODEL_REFUSED
    assert "Invalid JSON payload" in (info.value.details or "")
    assert len(fake_gemini.requests) == 1


async def test_context_too_long_is_its_own_error(
    client: GeminiClient, rec: Recorder, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_too_long()
    with pytest.raises(ContextTooLong) as info:
        await ask(client, rec)
    assert info.value.error == CONTEXT_TOO_LARGE
    assert len(fake_gemini.requests) == 1


async def test_connection_dropped_before_any_text_is_retried(
    client: GeminiClient, rec: Recorder, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_text("lost", drop_after=0)
    fake_gemini.script_text("again")
    reply = await ask(client, rec)
    assert reply.text == "again" and "".join(rec.texts) == "again"
    assert len(fake_gemini.requests) == 2


async def test_failure_after_text_streamed_is_not_retried_and_usage_is_kept(
    client: GeminiClient, rec: Recorder, fake_gemini: FakeGemini
) -> None:
    first = _candidate_chunk([{"text": "Half an ans"}])
    first["usageMetadata"] = usage_chunk(12, 3)
    fake_gemini.script_chunks([first, _candidate_chunk([{"text": "wer"}])], drop_after=1)
    fake_gemini.script_text("never sent")
    with pytest.raises(ModelFailed):
        await ask(client, rec)
    assert rec.texts == ["Half an ans"]
    assert rec.usage == [Usage(12, 3)]
    assert len(fake_gemini.requests) == 1 and fake_gemini.pending() == 1


def test_no_key_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(Unavailable) as info:
        GeminiClient(settings.model_copy(update={"gemini_api_key": SecretStr("")}))
    assert info.value.error == NO_MODEL
    assert "GEMINI_API_KEY" in info.value.error


async def test_a_failing_callback_is_not_mistaken_for_a_model_error(
    client: GeminiClient, rec: Recorder, fake_gemini: FakeGemini
) -> None:
    fake_gemini.script_text("Hello", chunks=1)
    fake_gemini.script_text("not retried")

    async def broken(text: str) -> None:
        raise RuntimeError("publish failed")

    with pytest.raises(RuntimeError, match="publish failed"):
        await client.generate(
            "S", [UserText("hi")], tools_enabled=True, on_text=broken, on_usage=rec.on_usage
        )
    assert len(fake_gemini.requests) == 1
