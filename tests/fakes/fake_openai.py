"""A scripted loopback fake of the chat-completions streaming API that the real openai SDK
can talk to (what Ollama, vLLM, llama.cpp's server and LM Studio serve under /v1)."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from pydantic import SecretStr

from chatdf.settings import Settings
from tests.fakes.fake_gemini import Reply, Step, split_text
from tests.fakes.scripted import ScriptedServer

MODEL = "fake-model"
API_KEY = "fake-openai-key"
TOO_LONG_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted in "
    "9120 tokens. Please reduce the length of the messages."
)


@dataclass
class RecordedRequest:
    """A chat-completions request the SDK sent, as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.body.get("messages", [])
        return messages

    @property
    def system_text(self) -> str:
        return "".join(str(m.get("content")) for m in self.messages if m["role"] == "system")

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.body.get("tools", [])]

    @property
    def tool_choice(self) -> Any:
        return self.body.get("tool_choice")

    def texts(self, role: str | None = None) -> list[str]:
        """Text contents of user and assistant messages (the system prompt left out)."""
        return [
            m["content"]
            for m in self.messages
            if m["role"] in ("user", "assistant") and (role is None or m["role"] == role)
            if m.get("content")
        ]

    def tool_calls(self) -> list[dict[str, Any]]:
        """Every tool call of the assistant messages, in order."""
        return [
            c for m in self.messages if m["role"] == "assistant" for c in m.get("tool_calls", [])
        ]

    def tool_results(self) -> list[dict[str, Any]]:
        """Every tool message as {tool_call_id, result (parsed JSON)}."""
        return [
            {"tool_call_id": m["tool_call_id"], "result": json.loads(m["content"])}
            for m in self.messages
            if m["role"] == "tool"
        ]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_chunk(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The last chunk a server sends when asked for usage (`choices` empty)."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class FakeOpenAI(ScriptedServer[Reply]):
    """Loopback HTTP server answering POST {base}/chat/completions with `stream: true` SSE.

    Tests queue replies (`script_*`); each request pops one and is recorded in `requests`.
    Like real servers it sends the usage chunk only when the request asked for it
    (`stream_options.include_usage`). An unscripted request gets a 500 naming the problem.
    """

    def __init__(self) -> None:
        super().__init__(_make_handler)
        self._usage: dict[int, dict[str, Any]] = {}  # reply id -> its usage chunk
        self.requests: list[RecordedRequest] = []

    @property
    def base_url(self) -> str:
        """What MODEL_BASE_URL is set to (the SDK appends /chat/completions)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # Scripting ----------------------------------------------------------------------------------

    def script_chunks(
        self,
        chunks: list[dict[str, Any]],
        *,
        usage: tuple[int, int] | None = None,
        hold_after: int | None = None,
        drop_after: int | None = None,
    ) -> Reply:
        """Queues raw chunks (then the usage chunk, when asked); optionally hold or drop after N."""
        reply = Reply()
        for i, chunk in enumerate(chunks):
            if hold_after is not None and i == hold_after:
                reply.steps.append(Step(gate=reply.gate))
            if drop_after is not None and i == drop_after:
                reply.steps.append(Step(drop=True))
                break
            reply.steps.append(Step(chunk=chunk))
        else:
            if hold_after is not None and hold_after >= len(chunks):
                reply.steps.append(Step(gate=reply.gate))
            if drop_after is not None and drop_after >= len(chunks):
                reply.steps.append(Step(drop=True))
        with self._lock:
            if usage is not None:
                self._usage[id(reply)] = usage_chunk(*usage)
            self._replies.append(reply)
        return reply

    def script_text(
        self,
        text: str,
        chunks: int = 3,
        *,
        usage: tuple[int, int] = (10, 5),
        hold_after: int | None = None,
        drop_after: int | None = None,
    ) -> Reply:
        """Queues a text answer streamed in `chunks` content deltas."""
        out = [_chunk({"role": "assistant", "content": ""})]
        out += [_chunk({"content": piece}) for piece in split_text(text, chunks)]
        out.append(_chunk({}, finish="stop"))
        # Indexes count the content deltas (the role chunk before them carries no text).
        hold = None if hold_after is None else hold_after + 1
        drop = None if drop_after is None else drop_after + 1
        return self.script_chunks(out, usage=usage, hold_after=hold, drop_after=drop)

    def script_tool_call(
        self,
        name: str,
        args: dict[str, Any],
        *,
        text: str = "",
        usage: tuple[int, int] = (20, 8),
        call_id: str = "call_fake_1",
        extra_calls: list[tuple[str, dict[str, Any]]] | None = None,
        pieces: int = 3,
    ) -> Reply:
        """Queues an answer that (after optional text) asks for tool calls, each streamed as
        fragments: id and name first, then the JSON arguments in `pieces` parts."""
        out = [_chunk({"role": "assistant", "content": text or None})]
        calls = [(call_id, name, args)]
        calls += [(f"{call_id}_{i}", n, a) for i, (n, a) in enumerate(extra_calls or [], 1)]
        for index, (cid, cname, cargs) in enumerate(calls):
            head = {"index": index, "id": cid, "type": "function"}
            head["function"] = {"name": cname, "arguments": ""}
            out.append(_chunk({"tool_calls": [head]}))
            for piece in split_text(json.dumps(cargs), pieces):
                fragment = {"index": index, "function": {"arguments": piece}}
                out.append(_chunk({"tool_calls": [fragment]}))
        out.append(_chunk({}, finish="tool_calls"))
        return self.script_chunks(out, usage=usage)

    def script_sql(self, query: str, **kwargs: Any) -> Reply:
        return self.script_tool_call("execute_sql", {"query": query}, **kwargs)

    def script_error(
        self, status: int, message: str | None = None, code: str | None = None
    ) -> Reply:
        """Queues an HTTP error with OpenAI's JSON error body."""
        kind = "invalid_request_error" if status < 500 else "server_error"
        error = {"message": message or f"Fake error {status}", "type": kind, "code": code}
        reply = Reply(status=status, error_body={"error": error})
        with self._lock:
            self._replies.append(reply)
        return reply

    def script_too_long(self) -> Reply:
        """Queues OpenAI's (and vLLM's) answer to a prompt over the context window."""
        return self.script_error(400, TOO_LONG_MESSAGE, "context_length_exceeded")

    # Serving ------------------------------------------------------------------------------------

    def _next_reply(self, request: RecordedRequest) -> tuple[Reply | None, dict[str, Any] | None]:
        with self._lock:
            self.requests.append(request)
            if not self._replies:
                return None, None
            reply = self._replies.popleft()
            return reply, self._usage.pop(id(reply), None)


def _make_handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.partition("?")[0] != "/v1/chat/completions":
                self._send_json(404, {"error": {"message": "no such route", "code": None}})
                return
            body = json.loads(raw or b"{}")
            request = RecordedRequest(
                path=self.path, headers={k.lower(): v for k, v in self.headers.items()}, body=body
            )
            reply, usage = fake._next_reply(request)
            if reply is None:
                message = "FakeOpenAI: no scripted reply for this request"
                self._send_json(500, {"error": {"message": message, "code": None}})
                return
            try:
                if reply.status != 200:
                    self._send_json(reply.status, reply.error_body or {})
                elif not body.get("stream"):
                    self._send_json(400, {"error": {"message": "FakeOpenAI streams only"}})
                else:
                    wants_usage = (body.get("stream_options") or {}).get("include_usage")
                    self._stream(reply, usage if wants_usage else None)
            finally:
                reply.finished.set()

        def _send_json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        def _stream(self, reply: Reply, usage: dict[str, Any] | None) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for step in reply.steps:
                    if step.gate is not None:
                        reply.reached.set()
                        fake._wait(step.gate)
                    elif step.drop:
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    elif step.chunk is not None:
                        self._event(json.dumps(step.chunk))
                if usage is not None:
                    self._event(json.dumps(usage))
                self._event("[DONE]")
                reply.reached.set()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass  # the client went away (a stopped turn, a read timeout)

        def _event(self, data: str) -> None:
            payload = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()

    return Handler


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A started FakeOpenAI, closed after the test."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def openai_settings(settings: Settings, fake_openai: FakeOpenAI) -> Settings:
    """The `settings` fixture with MODEL_PROVIDER=openai pointed at the fake."""
    return settings.model_copy(
        update={
            "model_provider": "openai",
            "model_base_url": fake_openai.base_url,
            "model_name": MODEL,
            "model_api_key": SecretStr(API_KEY),
        }
    )
