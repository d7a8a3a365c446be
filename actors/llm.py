"""What every model provider shares: one streamed call with tools, its retries, usage, errors.

The provider SDKs are imported only by their own modules (actors/gemini.py,
actors/openai_model.py), and only the configured one is loaded (`make_client`).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import httpx

from actors.conversation import Entry, ModelTurn, ToolCall
from chatdf.errors import ChatdfError, Unavailable, UpstreamFailed
from chatdf.settings import Settings

log = logging.getLogger(__name__)

NO_MODEL = "The model is not configured: set GEMINI_API_KEY"
NO_OPENAI_MODEL = (
    "The model is not configured: set MODEL_BASE_URL (an OpenAI-compatible server) or MODEL_API_KEY"
)
NO_MODEL_NAME = "The model is not configured: set MODEL_NAME"
CONTEXT_TOO_LARGE = "Conversation context too large. Try starting a new conversation."
MODEL_BUSY = "The model is busy right now. Try again in a moment."
MODEL_FAILED = "The model could not answer. Try again in a moment."
MODEL_REFUSED = "The model refused the request."
MODEL_STALLED = "The model stopped answering (nothing for {seconds} seconds). Try again."

# How providers and servers word "the prompt is over the model's context window": Gemini,
# OpenAI and vLLM ("maximum context length"), llama.cpp ("exceeds the available context size").
TOO_LONG = re.compile(
    r"input token count.*exceed|exceeds the maximum number of tokens|too many tokens"
    r"|context (window|length|size)|context_length_exceeded|prompt is too long",
    re.IGNORECASE | re.DOTALL,
)
_TRANSIENT_CODES = frozenset({408, 429})
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TransportError,
    ConnectionError,
    TimeoutError,
)
try:  # google-genai streams through aiohttp when it is installed (ray[default] brings it)
    import aiohttp

    CONNECTION_ERRORS += (aiohttp.ClientError,)
except ImportError:  # pragma: no cover
    pass

OnText = Callable[[str], Awaitable[None]]
OnUsage = Callable[["Usage"], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")
RequestT = TypeVar("RequestT")
ChunkT = TypeVar("ChunkT")
ChunkT_contra = TypeVar("ChunkT_contra", contravariant=True)


class ContextTooLong(ChatdfError):
    """The model refused the prompt because it is over the model's input token limit."""

    status = 400

    def __init__(self, error: str = CONTEXT_TOO_LARGE, details: str | None = None) -> None:
        super().__init__(error, details)


class ModelFailed(UpstreamFailed):
    """The model call failed for good (retries exhausted, or an error not worth retrying)."""


class ModelStalled(TimeoutError):
    """No chunk (or no answer at all) from the model within MODEL_READ_TIMEOUT_S."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no data from the model for {seconds:g} seconds")
        self.seconds = seconds


@dataclass(frozen=True)
class Usage:
    """Tokens of one model call; thinking tokens count as output (providers bill them so)."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class ModelReply:
    """What one model call produced: streamed text, tool calls, and the turn to replay."""

    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    turn: ModelTurn = field(default_factory=ModelTurn)
    usage: Usage = field(default_factory=Usage)


class ModelClient(Protocol):
    """What the turn needs from a model; GeminiClient and OpenAIClient are the real ones."""

    async def generate(
        self,
        system: str,
        contents: Sequence[Entry],
        *,
        tools_enabled: bool,
        on_text: OnText,
        on_usage: OnUsage,
    ) -> ModelReply: ...


@dataclass(frozen=True)
class Failure:
    """A provider SDK's failure in neutral terms, so every provider retries and words alike."""

    status: int | None = None  # the HTTP status the API answered; None: no answer
    connection: bool = False  # no (complete) answer: refused, reset, dropped, timed out
    too_long: bool = False  # over the model's context window


def is_transient(failure: Failure) -> bool:
    """429, 408 and 5xx answers and broken connections are worth another try."""
    if failure.connection:
        return True
    status = failure.status or 0
    return status in _TRANSIENT_CODES or 500 <= status < 600


def model_error(exc: BaseException, failure: Failure) -> ChatdfError:
    """The sentence a person sees for a model failure; the SDK's text goes in details."""
    details = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ModelStalled):
        return ModelFailed(MODEL_STALLED.format(seconds=f"{exc.seconds:g}"), str(exc))
    if failure.too_long:
        return ContextTooLong(details=details)
    if failure.status == 429:
        return ModelFailed(MODEL_BUSY, details)
    if failure.status is not None and 400 <= failure.status < 500:
        return ModelFailed(MODEL_REFUSED, details)
    return ModelFailed(MODEL_FAILED, details)


def not_configured(settings: Settings) -> str | None:
    """The sentence naming the settings chat still needs; None when a model is configured."""
    if settings.model_provider == "openai":
        if not (settings.model_api_key.get_secret_value() or settings.model_base_url):
            return NO_OPENAI_MODEL
        if not settings.model_name:
            return NO_MODEL_NAME
        return None
    return None if settings.resolved_model_api_key else NO_MODEL


PROVIDER_MODULES = {"gemini": "actors.gemini", "openai": "actors.openai_model"}


def import_provider(settings: Settings) -> None:
    """Imports the configured provider's module and SDK, and no other, and builds the SDK's
    lazily built types (its `warm_types`, when it has one): a warm session actor does this
    before its first turn, which then skips both."""
    module = importlib.import_module(PROVIDER_MODULES[settings.model_provider])
    warm = getattr(module, "warm_types", None)
    if warm is not None:
        try:
            warm()
        except Exception:  # best effort: the first turn builds them, as without it
            log.warning("could not build the model SDK's types ahead", exc_info=True)


def make_client(settings: Settings) -> ModelClient:
    """The client of MODEL_PROVIDER; only that provider's SDK is imported."""
    if settings.model_provider == "openai":
        from actors.openai_model import OpenAIClient

        return OpenAIClient(settings)
    from actors.gemini import GeminiClient

    return GeminiClient(settings)


class Collector(Protocol[ChunkT_contra]):
    """Folds one provider's streamed chunks into a ModelReply."""

    @property
    def usage(self) -> Usage | None:
        """The latest usage the stream reported (None: none yet)."""
        ...

    def add(self, chunk: ChunkT_contra) -> list[str]:
        """Takes one chunk; returns the text pieces to stream, in order."""
        ...

    def finish(self) -> ModelReply: ...


class _CallFailed(Exception):
    """An SDK failure of one attempt, and whether text had already streamed."""

    def __init__(self, cause: Exception, streamed: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.streamed = streamed


class StreamingClient(ABC, Generic[RequestT, ChunkT]):
    """Streams one model call at a time; retries transient failures before any text streamed.

    A provider says how to build its request, open its stream, fold its chunks and read its
    SDK's errors; the retries, timeouts and usage reports are the same for all.
    """

    provider: str = ""

    def __init__(self, settings: Settings, *, sleep: Sleep = asyncio.sleep) -> None:
        missing = not_configured(settings)
        if missing:
            raise Unavailable(missing)
        self.settings = settings
        self.model = settings.resolved_model_name
        self._sleep = sleep

    @abstractmethod
    def request(self, system: str, contents: Sequence[Entry], tools_enabled: bool) -> RequestT:
        """The provider's request for one call (built once, sent again on a retry)."""

    @abstractmethod
    async def open_stream(self, request: RequestT) -> AsyncIterator[ChunkT]:
        """Sends the request; returns once the answer starts."""

    @abstractmethod
    def collector(self) -> Collector[ChunkT]: ...

    @abstractmethod
    def failure(self, exc: BaseException) -> Failure:
        """What an exception of this provider's SDK means."""

    async def close_stream(self, stream: AsyncIterator[ChunkT]) -> None:
        """Frees a stream left unfinished (a failure or a cancel); nothing by default."""

    async def generate(
        self,
        system: str,
        contents: Sequence[Entry],
        *,
        tools_enabled: bool,
        on_text: OnText,
        on_usage: OnUsage,
    ) -> ModelReply:
        """One model call: streams text to `on_text`, reports each attempt's usage to `on_usage`.

        Raises ContextTooLong, or ModelFailed once retries are spent or when text already
        streamed (a retry would repeat it).
        """
        request = self.request(system, contents, tools_enabled)
        attempt = 0
        while True:
            try:
                return await self._attempt(request, on_text, on_usage)
            except _CallFailed as failed:
                exc = failed.cause
                failure = self.failure(exc)
                if failure.too_long:
                    raise ContextTooLong(details=f"{type(exc).__name__}: {exc}") from exc
                retry = not failed.streamed and is_transient(failure)
                if not retry or attempt >= self.settings.llm_max_retries:
                    raise model_error(exc, failure) from exc
            await self._sleep(self.settings.llm_backoff_s * 2**attempt)
            attempt += 1

    async def _attempt(self, request: RequestT, on_text: OnText, on_usage: OnUsage) -> ModelReply:
        """One HTTP call. Only the SDK's failures become _CallFailed; callback errors propagate."""
        collector = self.collector()
        streamed = False
        stream: AsyncIterator[ChunkT] | None = None
        read_timeout = self.settings.model_read_timeout_s
        try:
            try:
                stream = await _within(self.open_stream(request), read_timeout)
            except Exception as exc:  # ModelStalled too
                raise _CallFailed(exc, streamed) from exc
            while True:
                try:
                    chunk = await _within(anext(stream), read_timeout)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    await _report(on_usage, collector.usage)
                    raise _CallFailed(exc, streamed) from exc
                for text in collector.add(chunk):
                    streamed = True
                    await on_text(text)
        except asyncio.CancelledError:
            await asyncio.shield(_report(on_usage, collector.usage))
            if stream is not None:
                await asyncio.shield(self.close_stream(stream))
            raise
        except BaseException:
            if stream is not None:
                await self.close_stream(stream)
            raise
        reply = collector.finish()
        await _report(on_usage, reply.usage)
        return reply


async def _within(step: Awaitable[T], seconds: float) -> T:
    """`step` bounded by `seconds` (ModelStalled past them), awaited in this very task.

    Not asyncio.wait_for: on Python 3.11 it runs the step in another task and loses a cancel
    that arrives just as the step finishes (a chunk landing as /stop or the turn deadline
    cancels), and the stream would go on.
    """
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            return await step
    except TimeoutError:
        if timeout.expired():
            raise ModelStalled(seconds) from None
        raise


async def _report(on_usage: OnUsage, usage: Usage | None) -> None:
    # A refused call (no usage reported) costs nothing, so nothing is recorded for it.
    if usage is not None and usage.total > 0:
        await on_usage(usage)
