"""The Gemini client: one streamed model call with tools, its retries, usage and error kinds."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from chatdf.errors import ChatdfError, Unavailable, UpstreamFailed
from chatdf.settings import Settings

NO_MODEL = "The model is not configured: set GEMINI_API_KEY"
CONTEXT_TOO_LARGE = "Conversation context too large. Try starting a new conversation."
MODEL_BUSY = "The model is busy right now. Try again in a moment."
MODEL_FAILED = "The model could not answer. Try again in a moment."
MODEL_REFUSED = "The model refused the request."
MODEL_STALLED = "The model stopped answering (nothing for {seconds} seconds). Try again."

_TOO_LONG = re.compile(
    r"input token count.*exceed|exceeds the maximum number of tokens|too many tokens"
    r"|context (window|length)|prompt is too long",
    re.IGNORECASE | re.DOTALL,
)
_TRANSIENT_CODES = frozenset({408, 429})
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
)
try:  # the SDK streams through aiohttp when it is installed (ray[default] brings it)
    import aiohttp

    _CONNECTION_ERRORS += (aiohttp.ClientError,)
except ImportError:  # pragma: no cover
    pass

OnText = Callable[[str], Awaitable[None]]
OnUsage = Callable[["Usage"], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]


class ContextTooLong(ChatdfError):
    """Gemini refused the prompt because it is over the model's input token limit."""

    status = 400

    def __init__(self, error: str = CONTEXT_TOO_LARGE, details: str | None = None) -> None:
        super().__init__(error, details)


class ModelFailed(UpstreamFailed):
    """The model call failed for good (retries exhausted, or an error not worth retrying)."""


@dataclass(frozen=True)
class Usage:
    """Tokens of one model call; thinking tokens count as output (Gemini bills them so)."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class ModelReply:
    """What one model call produced: streamed text, function calls, and the turn to replay."""

    text: str = ""
    calls: list[types.Part] = field(default_factory=list)  # parts holding a function_call
    content: types.Content = field(default_factory=lambda: types.Content(role="model", parts=[]))
    usage: Usage = field(default_factory=Usage)


class ModelClient(Protocol):
    """What the turn needs from a model; GeminiClient is the real one."""

    async def generate(
        self,
        system: str,
        contents: list[types.Content],
        *,
        tools_enabled: bool,
        on_text: OnText,
        on_usage: OnUsage,
    ) -> ModelReply: ...


def tool_declarations() -> list[types.Tool]:
    """The two functions the model may call; our code runs them (no automatic calling)."""
    string = types.Type.STRING
    return [
        types.Tool(
            function_declarations=[
                types.FunctionDeclaration(
                    name="execute_sql",
                    description=(
                        "Run one read-only Polars SQL SELECT over the conversation's tables "
                        "and get back the columns, the first rows and the total row count."
                    ),
                    parameters=types.Schema(
                        type=types.Type.OBJECT,
                        properties={
                            "query": types.Schema(type=string, description="One SQL SELECT.")
                        },
                        required=["query"],
                    ),
                ),
                types.FunctionDeclaration(
                    name="load_dataset",
                    description=(
                        "Load a dataset (CSV, Parquet, JSON...) from an http(s) URL into the "
                        "conversation as a new table; returns its table name and columns."
                    ),
                    parameters=types.Schema(
                        type=types.Type.OBJECT,
                        properties={"url": types.Schema(type=string, description="http(s) URL.")},
                        required=["url"],
                    ),
                ),
            ]
        )
    ]


def usage_of(metadata: types.GenerateContentResponseUsageMetadata | None) -> Usage | None:
    if metadata is None:
        return None
    output = (metadata.candidates_token_count or 0) + (metadata.thoughts_token_count or 0)
    return Usage(input_tokens=metadata.prompt_token_count or 0, output_tokens=output)


def is_too_long(exc: BaseException) -> bool:
    return (
        isinstance(exc, genai_errors.APIError)
        and exc.code == 400
        and bool(_TOO_LONG.search(f"{exc.message or ''} {exc.details}"))
    )


def is_transient(exc: BaseException) -> bool:
    """429, 408 and 5xx answers and broken connections are worth another try."""
    if isinstance(exc, genai_errors.APIError):
        return exc.code in _TRANSIENT_CODES or 500 <= (exc.code or 0) < 600
    return isinstance(exc, _CONNECTION_ERRORS)


class ModelStalled(TimeoutError):
    """No chunk (or no answer at all) from the model within MODEL_READ_TIMEOUT_S."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no data from the model for {seconds:g} seconds")
        self.seconds = seconds


def model_error(exc: BaseException) -> ChatdfError:
    """The sentence a person sees for a model failure; the SDK's text goes in details."""
    details = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ModelStalled):
        return ModelFailed(MODEL_STALLED.format(seconds=f"{exc.seconds:g}"), str(exc))
    if is_too_long(exc):
        return ContextTooLong(details=details)
    if isinstance(exc, genai_errors.APIError) and exc.code == 429:
        return ModelFailed(MODEL_BUSY, details)
    if isinstance(exc, genai_errors.APIError) and exc.code is not None and 400 <= exc.code < 500:
        return ModelFailed(MODEL_REFUSED, details)
    return ModelFailed(MODEL_FAILED, details)


class _CallFailed(Exception):
    """An SDK failure of one attempt, and whether text had already streamed."""

    def __init__(self, cause: Exception, streamed: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.streamed = streamed


class _Collector:
    """Folds streamed chunks into a ModelReply, keeping parts replayable (thought signatures)."""

    def __init__(self) -> None:
        self.reply = ModelReply()
        self.text_signature: bytes | None = None
        self.usage: Usage | None = None

    def add(self, chunk: types.GenerateContentResponse) -> list[str]:
        self.usage = usage_of(chunk.usage_metadata) or self.usage
        texts: list[str] = []
        candidate = chunk.candidates[0] if chunk.candidates else None
        parts = candidate.content.parts if candidate and candidate.content else None
        for part in parts or []:
            if part.function_call is not None:
                self.reply.calls.append(part)
            elif part.text and not part.thought:
                if part.thought_signature and self.text_signature is None:
                    self.text_signature = part.thought_signature
                texts.append(part.text)
                self.reply.text += part.text
        return texts

    def finish(self) -> ModelReply:
        parts: list[types.Part] = []
        if self.reply.text:
            parts.append(types.Part(text=self.reply.text, thought_signature=self.text_signature))
        self.reply.content = types.Content(role="model", parts=parts + self.reply.calls)
        self.reply.usage = self.usage or Usage()
        return self.reply


class GeminiClient:
    """Streams one model call at a time; retries transient failures before any text streamed."""

    def __init__(self, settings: Settings, *, sleep: Sleep = asyncio.sleep) -> None:
        if not settings.llm_configured:
            raise Unavailable(NO_MODEL)
        self.settings = settings
        self.model = settings.gemini_model
        self._sleep = sleep
        # The SDK's own retries stay off (attempts=1) so only this class decides, and so its
        # implicit 1-10 s reconnect pause never runs.
        options = types.HttpOptions(
            base_url=settings.gemini_base_url or None,
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        self._client = genai.Client(
            api_key=settings.gemini_api_key.get_secret_value(), vertexai=False, http_options=options
        )

    def config(self, system: str, tools_enabled: bool) -> types.GenerateContentConfig:
        modes = types.FunctionCallingConfigMode
        mode = modes.AUTO if tools_enabled else modes.NONE
        # Tools stay declared even when disabled: the contents may hold earlier function calls.
        return types.GenerateContentConfig(
            system_instruction=system,
            tools=list(tool_declarations()),
            tool_config=types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(mode=mode)
            ),
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )

    async def generate(
        self,
        system: str,
        contents: list[types.Content],
        *,
        tools_enabled: bool,
        on_text: OnText,
        on_usage: OnUsage,
    ) -> ModelReply:
        """One model call: streams text to `on_text`, reports each attempt's usage to `on_usage`.

        Raises ContextTooLong, or ModelFailed once retries are spent or when text already
        streamed (a retry would repeat it).
        """
        config = self.config(system, tools_enabled)
        attempt = 0
        while True:
            try:
                return await self._attempt(config, contents, on_text, on_usage)
            except _CallFailed as failed:
                exc = failed.cause
                if is_too_long(exc):
                    raise ContextTooLong(details=f"{type(exc).__name__}: {exc}") from exc
                retry = not failed.streamed and is_transient(exc)
                if not retry or attempt >= self.settings.llm_max_retries:
                    raise model_error(exc) from exc
            await self._sleep(self.settings.llm_backoff_s * 2**attempt)
            attempt += 1

    async def _attempt(
        self,
        config: types.GenerateContentConfig,
        contents: list[types.Content],
        on_text: OnText,
        on_usage: OnUsage,
    ) -> ModelReply:
        """One HTTP call. Only the SDK's failures become _CallFailed; callback errors propagate."""
        collector = _Collector()
        streamed = False
        try:
            read_timeout = self.settings.model_read_timeout_s
            try:
                stream = await asyncio.wait_for(
                    self._client.aio.models.generate_content_stream(
                        model=self.model, contents=list(contents), config=config
                    ),
                    read_timeout,
                )
            except TimeoutError as exc:
                raise _CallFailed(ModelStalled(read_timeout), streamed) from exc
            while True:
                try:
                    chunk = await asyncio.wait_for(anext(stream), read_timeout)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    await _report(on_usage, collector.usage)
                    raise _CallFailed(ModelStalled(read_timeout), streamed) from None
                except Exception as exc:
                    await _report(on_usage, collector.usage)
                    raise _CallFailed(exc, streamed) from exc
                for text in collector.add(chunk):
                    streamed = True
                    await on_text(text)
        except asyncio.CancelledError:
            await asyncio.shield(_report(on_usage, collector.usage))
            raise
        reply = collector.finish()
        await _report(on_usage, reply.usage)
        return reply

    async def aclose(self) -> None:
        await self._client.aio.aclose()


async def _report(on_usage: OnUsage, usage: Usage | None) -> None:
    # A refused call (no usage metadata) costs nothing, so nothing is recorded for it.
    if usage is not None and usage.total > 0:
        await on_usage(usage)
