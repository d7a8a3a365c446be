"""The OpenAI-compatible provider (MODEL_PROVIDER=openai): chat-completions messages, tools,
streamed chunks and errors, through the official `openai` SDK.

It serves any server speaking the chat-completions API: Ollama, vLLM, llama.cpp's server,
LM Studio, OpenAI itself, and Gemini's OpenAI-compatible endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import openai
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

from actors.conversation import TOOLS, Entry, ModelTurn, ToolCall, ToolResults, UserText
from actors.llm import (
    CONNECTION_ERRORS,
    TOO_LONG,
    Failure,
    ModelReply,
    Sleep,
    StreamingClient,
    Usage,
)
from chatdf.settings import Settings

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"  # MODEL_BASE_URL empty: OpenAI itself
# The SDK refuses to start without a key; local servers (Ollama, vLLM, llama.cpp) ignore it.
NO_KEY = "no-key"
_CONNECT_TIMEOUT_S = 10.0
_TOO_LONG_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error"})


def tool_params() -> list[ChatCompletionToolParam]:
    """The functions the model may call (actors/conversation.py), as OpenAI function tools."""
    return [
        {
            "type": "function",
            "function": {
                "name": spec.name,
                "description": spec.description,
                "parameters": spec.json_schema(),
            },
        }
        for spec in TOOLS
    ]


# Messages ------------------------------------------------------------------------------------


def openai_messages(system: str, entries: Sequence[Entry]) -> list[ChatCompletionMessageParam]:
    """The conversation as chat-completions messages.

    Calls without an id (stored rounds, servers that send none) get `call_N` ids, the same
    for a call and its result: each ToolResults answers the calls of the turn before it.
    """
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    calls = results = 0
    for entry in entries:
        if isinstance(entry, UserText):
            messages.append({"role": "user", "content": entry.text})
        elif isinstance(entry, ModelTurn):
            if not entry.text and not entry.calls:
                continue
            message: dict[str, Any] = {"role": "assistant", "content": entry.text or None}
            if entry.calls:
                message["tool_calls"] = [
                    _call_param(call, call.id or f"call_{calls + i}")
                    for i, call in enumerate(entry.calls)
                ]
                calls += len(entry.calls)
            messages.append(message)
        elif isinstance(entry, ToolResults):
            for r in entry.results:
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": r.call.id or f"call_{results}",
                        "content": json.dumps(r.result, default=str),
                    }
                )
                results += 1
    return cast(list[ChatCompletionMessageParam], messages)


def _call_param(call: ToolCall, call_id: str) -> dict[str, Any]:
    param: dict[str, Any] = {
        "id": call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.args)},
    }
    if call.signature:  # Gemini's OpenAI-compatible endpoint wants its signature back
        google = {"thought_signature": call.signature.decode(errors="replace")}
        param["extra_content"] = {"google": google}
    return param


# Replies -------------------------------------------------------------------------------------


@dataclass
class _PendingCall:
    """A tool call being assembled from streamed fragments."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    signature: str | None = None

    def call(self) -> ToolCall:
        raw = "".join(self.arguments)
        try:
            args = json.loads(raw) if raw.strip() else {}
        except ValueError:
            args = None
        if not isinstance(args, dict):
            # The tool answers that its argument is missing, and the model can try again.
            log.warning("the model sent tool arguments that are not a JSON object")
            args = {}
        signature = self.signature.encode() if self.signature else None
        return ToolCall(name=self.name, args=args, id=self.id or None, signature=signature)


class _Collector:
    """Folds chat-completion chunks: text deltas, tool-call fragments, the usage chunk."""

    def __init__(self) -> None:
        self.text = ""
        self.usage: Usage | None = None
        self._calls: list[_PendingCall] = []
        self._by_index: dict[int, _PendingCall] = {}

    def add(self, chunk: ChatCompletionChunk) -> list[str]:
        if chunk.usage is not None:  # the last chunk with stream_options.include_usage
            usage = chunk.usage
            self.usage = Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0)
        texts: list[str] = []
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            if choice.delta.content:
                texts.append(choice.delta.content)
                self.text += choice.delta.content
            for fragment in choice.delta.tool_calls or []:
                self._fold(fragment)
        return texts

    def _fold(self, fragment: ChoiceDeltaToolCall) -> None:
        pending = self._by_index.get(fragment.index)
        # A new id at a known index is a new call (servers that send whole calls at index 0).
        if pending is None or (fragment.id and pending.id and fragment.id != pending.id):
            pending = _PendingCall()
            self._calls.append(pending)
            self._by_index[fragment.index] = pending
        if fragment.id:
            pending.id = fragment.id
        function = fragment.function
        if function is not None:
            if function.name and not pending.name:
                pending.name = function.name
            if function.arguments:
                pending.arguments.append(function.arguments)
        extra = (fragment.model_extra or {}).get("extra_content")
        google = extra.get("google") if isinstance(extra, dict) else None
        if isinstance(google, dict) and isinstance(google.get("thought_signature"), str):
            pending.signature = google["thought_signature"]

    def finish(self) -> ModelReply:
        calls = [pending.call() for pending in self._calls if pending.name]
        return ModelReply(
            text=self.text,
            calls=calls,
            turn=ModelTurn(text=self.text, calls=tuple(calls)),
            usage=self.usage or Usage(),
        )


# The client ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAIRequest:
    messages: list[ChatCompletionMessageParam]
    tool_choice: str


def is_too_long(exc: BaseException) -> bool:
    if not isinstance(exc, openai.APIError):
        return False
    if isinstance(exc, openai.APIStatusError) and exc.status_code not in (400, 413):
        return False
    code = exc.code if isinstance(exc.code, str) else ""
    return code in _TOO_LONG_CODES or bool(TOO_LONG.search(f"{exc.message} {exc.body}"))


def _status_in_body(exc: openai.APIError) -> int | None:
    """An error event inside the stream (no HTTP status) may carry one as its code."""
    body = exc.body if isinstance(exc.body, dict) else {}
    for value in (body.get("code"), body.get("status")):
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return int(value)
    return None


class OpenAIClient(StreamingClient[OpenAIRequest, ChatCompletionChunk]):
    """An OpenAI-compatible server through the `openai` SDK, built once per session actor."""

    provider = "openai"

    def __init__(self, settings: Settings, *, sleep: Sleep = asyncio.sleep) -> None:
        super().__init__(settings, sleep=sleep)
        # max_retries=0: only the shared policy retries. The read timeout is the shared
        # per-chunk one (MODEL_READ_TIMEOUT_S); the SDK's own is only a backstop past it.
        self._client = openai.AsyncOpenAI(
            api_key=settings.resolved_model_api_key or NO_KEY,
            base_url=settings.resolved_model_base_url or OPENAI_BASE_URL,
            max_retries=0,
            timeout=openai.Timeout(
                settings.model_read_timeout_s * 2,
                connect=min(_CONNECT_TIMEOUT_S, settings.model_read_timeout_s),
            ),
        )
        self._tools = tool_params()

    def request(self, system: str, contents: Sequence[Entry], tools_enabled: bool) -> OpenAIRequest:
        # Tools stay declared when disabled ("none"): the messages may hold earlier calls.
        return OpenAIRequest(openai_messages(system, contents), "auto" if tools_enabled else "none")

    async def open_stream(self, request: OpenAIRequest) -> AsyncIterator[ChatCompletionChunk]:
        stream = await self._client.chat.completions.create(
            model=self.model,
            messages=request.messages,
            tools=self._tools,
            tool_choice=cast(Any, request.tool_choice),
            stream=True,
            stream_options={"include_usage": True},
        )
        return cast(AsyncIterator[ChatCompletionChunk], stream)

    def collector(self) -> _Collector:
        return _Collector()

    def failure(self, exc: BaseException) -> Failure:
        if isinstance(exc, openai.APIConnectionError):  # APITimeoutError is one too
            return Failure(connection=True)
        if isinstance(exc, openai.APIStatusError):
            return Failure(status=exc.status_code, too_long=is_too_long(exc))
        if isinstance(exc, openai.APIError):
            return Failure(status=_status_in_body(exc), too_long=is_too_long(exc))
        return Failure(connection=isinstance(exc, CONNECTION_ERRORS))

    async def close_stream(self, stream: AsyncIterator[ChatCompletionChunk]) -> None:
        if isinstance(stream, openai.AsyncStream):
            await stream.close()

    async def aclose(self) -> None:
        await self._client.close()
