"""The Gemini provider (MODEL_PROVIDER=gemini): google-genai contents, tools, chunks and errors."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from actors.conversation import (
    TOOLS,
    Entry,
    ModelTurn,
    ToolCall,
    ToolResult,
    ToolResults,
    UserText,
)
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


def tool_declarations() -> list[types.Tool]:
    """The functions the model may call (actors/conversation.py); our code runs them."""
    return [
        types.Tool(
            function_declarations=[
                types.FunctionDeclaration(
                    name=spec.name,
                    description=spec.description,
                    parameters=types.Schema(
                        type=types.Type.OBJECT,
                        properties={
                            name: types.Schema(type=types.Type.STRING, description=description)
                            for name, description in spec.parameters
                        },
                        required=[name for name, _ in spec.parameters],
                    ),
                )
                for spec in TOOLS
            ]
        )
    ]


# Contents ------------------------------------------------------------------------------------


def gemini_contents(entries: Sequence[Entry]) -> list[types.Content]:
    """The conversation as Gemini contents; neighbours of one role merge (roles alternate)."""
    contents: list[types.Content] = []
    for entry in entries:
        if isinstance(entry, UserText):
            _append(contents, "user", [types.Part(text=entry.text)])
        elif isinstance(entry, ModelTurn):
            parts = [types.Part(text=entry.text, thought_signature=entry.signature)]
            _append(contents, "model", (parts if entry.text else []) + _call_parts(entry))
        elif isinstance(entry, ToolResults):
            parts = [response_part(r.call.name, r.result, r.call.id) for r in entry.results]
            _append(contents, "user", parts)
    return contents


def _call_parts(entry: ModelTurn) -> list[types.Part]:
    return [
        types.Part(
            function_call=types.FunctionCall(name=call.name, args=call.args, id=call.id),
            thought_signature=call.signature,
        )
        for call in entry.calls
    ]


def _append(contents: list[types.Content], role: str, parts: list[types.Part]) -> None:
    if not parts:
        return
    if contents and contents[-1].role == role and contents[-1].parts is not None:
        contents[-1].parts.extend(parts)
    else:
        contents.append(types.Content(role=role, parts=parts))


def response_part(name: str, result: dict[str, object], call_id: str | None = None) -> types.Part:
    return types.Part(
        function_response=types.FunctionResponse(name=name, response=result, id=call_id)
    )


# Replies -------------------------------------------------------------------------------------


def usage_of(metadata: types.GenerateContentResponseUsageMetadata | None) -> Usage | None:
    if metadata is None:
        return None
    output = (metadata.candidates_token_count or 0) + (metadata.thoughts_token_count or 0)
    return Usage(input_tokens=metadata.prompt_token_count or 0, output_tokens=output)


class _Collector:
    """Folds streamed chunks into a ModelReply, keeping what replays (thought signatures)."""

    def __init__(self) -> None:
        self.text = ""
        self.calls: list[ToolCall] = []
        self.text_signature: bytes | None = None
        self.usage: Usage | None = None

    def add(self, chunk: types.GenerateContentResponse) -> list[str]:
        self.usage = usage_of(chunk.usage_metadata) or self.usage
        texts: list[str] = []
        candidate = chunk.candidates[0] if chunk.candidates else None
        parts = candidate.content.parts if candidate and candidate.content else None
        for part in parts or []:
            call = part.function_call
            if call is not None:
                self.calls.append(
                    ToolCall(
                        name=call.name or "",
                        args=dict(call.args or {}),
                        id=call.id,
                        signature=part.thought_signature,
                    )
                )
            elif part.text and not part.thought:
                if part.thought_signature and self.text_signature is None:
                    self.text_signature = part.thought_signature
                texts.append(part.text)
                self.text += part.text
        return texts

    def finish(self) -> ModelReply:
        turn = ModelTurn(text=self.text, calls=tuple(self.calls), signature=self.text_signature)
        return ModelReply(
            text=self.text, calls=list(self.calls), turn=turn, usage=self.usage or Usage()
        )


def request_config(
    tools: Sequence[types.Tool], system: str, tools_enabled: bool
) -> types.GenerateContentConfig:
    modes = types.FunctionCallingConfigMode
    mode = modes.AUTO if tools_enabled else modes.NONE
    # Tools stay declared even when disabled: the contents may hold earlier function calls.
    return types.GenerateContentConfig(
        system_instruction=system,
        tools=list(tools),
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(mode=mode)
        ),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )


# Chunks as the API streams them (JSON), one with a function call and one with text.
SAMPLE_CHUNKS: tuple[dict[str, object], ...] = (
    {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {"name": TOOLS[0].name, "args": {"query": "SELECT 1"}},
                            "thoughtSignature": "c2ln",
                        }
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2},
        "modelVersion": "m",
        "responseId": "r",
    },
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "index": 0}]},
)


@functools.cache  # once per process: a spare's warm-up and its start both import the provider
def warm_types() -> None:
    """Builds the SDK's types ahead of a first turn, offline: google-genai defers each pydantic
    model's schema to its first use (`defer_build`), and parsing a chunk rebuilds every nested
    class. A session actor's first turn spent ≈ 45 ms of CPU on it (py-spy, sql-20), 64 % of its
    Python samples; this pass (≈ 25–30 ms, at start or in a spare's warm-up) builds a request
    with tools on and off and parses one chunk of each kind (`SAMPLE_CHUNKS`)."""
    call = ToolCall(name=TOOLS[0].name, args={"query": "SELECT 1"}, id=None, signature=b"s")
    entries: list[Entry] = [
        UserText("question"),
        ModelTurn(text="thinking", calls=(call,), signature=None),
        ToolResults((ToolResult(call, {"columns": ["n"], "rows": [[1]]}),)),
        UserText("next"),
    ]
    gemini_contents(entries)
    tools = tool_declarations()
    for enabled in (True, False):
        request_config(tools, "system", enabled)
    for chunk in SAMPLE_CHUNKS:
        # The SDK's own parsing of a streamed chunk (what generate_content_stream calls).
        parsed = types.GenerateContentResponse._from_response(response=chunk, kwargs={})
        _Collector().add(parsed)
    # A throwaway client, offline: its first build imports the transports (≈ 30 ms; the
    # next builds ≈ 2 ms) and builds the shared SSL contexts.
    sync_args, async_args = ssl_client_args()
    genai.Client(
        api_key="warm-up",
        vertexai=False,
        http_options=types.HttpOptions(
            client_args=dict(sync_args), async_client_args=dict(async_args)
        ),
    )


@functools.cache
def ssl_client_args() -> tuple[dict[str, Any], dict[str, Any]]:
    """The SSL contexts google-genai builds for a client, built once per process and handed to
    every client after (sync args, async args).

    Each `genai.Client` builds three (httpx, aiohttp, websocket), each loading the CA bundle:
    75 of a forked session actor's ≈ 500 samples in a py-spy profile of first turns. They are
    built here by the SDK's own functions, with its defaults (SSL_CERT_FILE / SSL_CERT_DIR,
    else its own choice of trust store), so the trust is the SDK's; the SDK passes a context it
    is given on to each transport (`verify` for httpx, `ssl` for aiohttp and websockets, each
    kept only where the client class takes it). Built in `warm_types`, so a fork server's
    template builds them once for all the workers it forks. Any failure: the SDK's own
    per-client contexts, as before."""
    try:
        from google.genai._api_client import BaseApiClient

        options = types.HttpOptions()
        sync_args, async_args = BaseApiClient._ensure_httpx_ssl_ctx(options)
        aiohttp_args = BaseApiClient._ensure_aiohttp_ssl_ctx(options)
        return (
            {"verify": sync_args["verify"]},
            {"verify": async_args["verify"], "ssl": aiohttp_args["ssl"]},
        )
    except Exception:
        return {}, {}


# The client ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeminiRequest:
    contents: list[types.Content]
    config: types.GenerateContentConfig


def is_too_long(exc: BaseException) -> bool:
    return (
        isinstance(exc, genai_errors.APIError)
        and exc.code == 400
        and bool(TOO_LONG.search(f"{exc.message or ''} {exc.details}"))
    )


class GeminiClient(StreamingClient[GeminiRequest, types.GenerateContentResponse]):
    """Gemini through google-genai: built once per session actor, reused by every turn."""

    provider = "gemini"

    def __init__(self, settings: Settings, *, sleep: Sleep = asyncio.sleep) -> None:
        super().__init__(settings, sleep=sleep)
        # The SDK's own retries stay off (attempts=1) so only the shared policy decides, and
        # so its implicit 1-10 s reconnect pause never runs.
        sync_args, async_args = ssl_client_args()
        options = types.HttpOptions(
            base_url=settings.resolved_model_base_url or None,
            retry_options=types.HttpRetryOptions(attempts=1),
            client_args=dict(sync_args),
            async_client_args=dict(async_args),
        )
        self._client = genai.Client(
            api_key=settings.resolved_model_api_key, vertexai=False, http_options=options
        )
        self._tools = tool_declarations()

    def config(self, system: str, tools_enabled: bool) -> types.GenerateContentConfig:
        return request_config(self._tools, system, tools_enabled)

    def request(self, system: str, contents: Sequence[Entry], tools_enabled: bool) -> GeminiRequest:
        return GeminiRequest(gemini_contents(contents), self.config(system, tools_enabled))

    async def open_stream(
        self, request: GeminiRequest
    ) -> AsyncIterator[types.GenerateContentResponse]:
        return await self._client.aio.models.generate_content_stream(
            model=self.model, contents=list(request.contents), config=request.config
        )

    def collector(self) -> _Collector:
        return _Collector()

    def failure(self, exc: BaseException) -> Failure:
        if isinstance(exc, genai_errors.APIError):
            return Failure(status=exc.code, too_long=is_too_long(exc))
        return Failure(connection=isinstance(exc, CONNECTION_ERRORS))

    async def aclose(self) -> None:
        await self._client.aio.aclose()
