"""A scripted loopback fake of the Gemini REST API that the real google-genai SDK can talk to."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from pydantic import SecretStr

from chatdf.settings import Settings
from tests.fakes.scripted import ScriptedServer

TOO_LONG_MESSAGE = (
    "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
)
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_PATH = re.compile(r"^/(?P<version>[^/]+)/models/(?P<model>[^:/]+):(?P<method>\w+)$")


@dataclass
class Step:
    """One element of a scripted stream: a JSON chunk, a hold point, or a dropped connection."""

    chunk: dict[str, Any] | None = None
    gate: threading.Event | None = None
    drop: bool = False
    delay_s: float = 0.0


@dataclass
class Reply:
    """One scripted answer: either an error (`status` != 200) or a stream of steps."""

    steps: list[Step] = field(default_factory=list)
    status: int = 200
    error_body: dict[str, Any] | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    reached: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        """Lets a stream held by `hold_after` continue."""
        self.gate.set()

    def wait_reached(self, timeout_s: float = 10.0) -> bool:
        """Blocks until the server has sent everything before the hold point."""
        return self.reached.wait(timeout_s)


@dataclass
class RecordedRequest:
    """A request the SDK sent, as the server saw it."""

    method: str
    model: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def system_text(self) -> str:
        system = self.body.get("systemInstruction") or {}
        return "".join(p.get("text", "") for p in system.get("parts", []))

    @property
    def contents(self) -> list[dict[str, Any]]:
        contents: list[dict[str, Any]] = self.body.get("contents", [])
        return contents

    @property
    def function_calling_mode(self) -> str | None:
        config = (self.body.get("toolConfig") or {}).get("functionCallingConfig") or {}
        mode: str | None = config.get("mode")
        return mode

    @property
    def tool_names(self) -> list[str]:
        return [
            d["name"]
            for tool in self.body.get("tools", [])
            for d in tool.get("functionDeclarations", [])
        ]

    def parts(self, kind: str) -> list[dict[str, Any]]:
        """Every part of the given kind (`text`, `functionCall`, `functionResponse`) in order."""
        return [p[kind] for c in self.contents for p in c.get("parts", []) if kind in p]

    def function_responses(self) -> list[dict[str, Any]]:
        return self.parts("functionResponse")

    def texts(self, role: str | None = None) -> list[str]:
        return [
            p["text"]
            for c in self.contents
            if role is None or c.get("role") == role
            for p in c.get("parts", [])
            if "text" in p
        ]


def usage_chunk(prompt_tokens: int, output_tokens: int, thoughts: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": output_tokens,
        "totalTokenCount": prompt_tokens + output_tokens + thoughts,
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def _candidate_chunk(parts: list[dict[str, Any]], finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "modelVersion": "fake-gemini"}


def split_text(text: str, chunks: int) -> list[str]:
    """Splits text into `chunks` non-empty pieces (fewer if the text is short)."""
    chunks = max(1, min(chunks, len(text) or 1))
    size = -(-len(text) // chunks) if text else 1
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class FakeGemini(ScriptedServer[Reply]):
    """Loopback HTTP server answering `:streamGenerateContent`, `:generateContent`, `:countTokens`.

    Tests queue replies (`script_*`); each model request pops one, and every request body is
    recorded in `requests`. It binds 127.0.0.1 on a free port, so other processes (Ray workers)
    on this machine reach it at `base_url`. An unscripted request gets a 500 naming the problem.
    """

    def __init__(self) -> None:
        super().__init__(_make_handler)
        self.requests: list[RecordedRequest] = []
        self.fallback: Reply | None = None  # served (repeatedly) when the queue is empty
        self.unscripted = 0

    # Lifecycle --------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # Scripting ----------------------------------------------------------------------------------

    def script(self, reply: Reply) -> Reply:
        with self._lock:
            self._replies.append(reply)
        return reply

    def script_chunks(
        self,
        chunks: list[dict[str, Any]],
        *,
        hold_after: int | None = None,
        drop_after: int | None = None,
        delay_s: float = 0.0,
    ) -> Reply:
        """Queues raw response chunks; optionally hold (until released) or drop after N chunks.

        `delay_s` pauses before each chunk (for manual runs; tests should prefer `hold_after`).
        """
        reply = Reply()
        for i, chunk in enumerate(chunks):
            if hold_after is not None and i == hold_after:
                reply.steps.append(Step(gate=reply.gate))
            if drop_after is not None and i == drop_after:
                reply.steps.append(Step(drop=True))
                break
            reply.steps.append(Step(chunk=chunk, delay_s=delay_s))
        else:
            if hold_after is not None and hold_after >= len(chunks):
                reply.steps.append(Step(gate=reply.gate))
            if drop_after is not None and drop_after >= len(chunks):
                reply.steps.append(Step(drop=True))
        return self.script(reply)

    def script_text(
        self,
        text: str,
        chunks: int = 3,
        *,
        usage: tuple[int, int] = (10, 5),
        thoughts: int = 0,
        hold_after: int | None = None,
        drop_after: int | None = None,
    ) -> Reply:
        """Queues a text answer streamed in `chunks` pieces; usage rides on the last chunk."""
        pieces = split_text(text, chunks)
        out = [_candidate_chunk([{"text": piece}]) for piece in pieces]
        out[-1]["candidates"][0]["finishReason"] = "STOP"
        out[-1]["usageMetadata"] = usage_chunk(*usage, thoughts=thoughts)
        return self.script_chunks(out, hold_after=hold_after, drop_after=drop_after)

    def script_tool_call(
        self,
        name: str,
        args: dict[str, Any],
        *,
        text: str = "",
        usage: tuple[int, int] = (20, 8),
        call_id: str | None = None,
        extra_calls: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> Reply:
        """Queues an answer that (after optional text) asks for one or more function calls."""
        chunks = [_candidate_chunk([{"text": text}])] if text else []
        call: dict[str, Any] = {"name": name, "args": args}
        if call_id:
            call["id"] = call_id
        parts: list[dict[str, Any]] = [{"functionCall": call, "thoughtSignature": "c2lnbmF0dXJl"}]
        parts += [{"functionCall": {"name": n, "args": a}} for n, a in extra_calls or []]
        last = _candidate_chunk(parts, finish="STOP")
        last["usageMetadata"] = usage_chunk(*usage)
        return self.script_chunks([*chunks, last])

    def script_sql(self, query: str, **kwargs: Any) -> Reply:
        return self.script_tool_call("execute_sql", {"query": query}, **kwargs)

    def script_error(
        self, status: int, message: str | None = None, status_name: str | None = None
    ) -> Reply:
        """Queues an HTTP error with Gemini's JSON error body."""
        name = status_name or _STATUS_NAMES.get(status, "UNKNOWN")
        body = {
            "error": {
                "code": status,
                "message": message or f"Fake Gemini error {status}",
                "status": name,
            }
        }
        return self.script(Reply(status=status, error_body=body))

    def script_too_long(self) -> Reply:
        """Queues Gemini's answer to a prompt over the model's context window."""
        return self.script_error(400, TOO_LONG_MESSAGE, "INVALID_ARGUMENT")

    # Serving ------------------------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_reply(self, request: RecordedRequest) -> Reply | None:
        with self._lock:
            self.requests.append(request)
            if self._replies:
                return self._replies.popleft()
            self.unscripted += 1
            return self.fallback


def _make_handler(fake: FakeGemini) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep test output clean

        def do_POST(self) -> None:  # noqa: N802
            path, _, _query = self.path.partition("?")
            match = _PATH.match(path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if match is None:
                self._send_json(404, {"error": {"code": 404, "message": "no such route"}})
                return
            body = json.loads(raw or b"{}")
            request = RecordedRequest(
                method=match["method"],
                model=match["model"],
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            if request.method == "countTokens":
                fake._record(request)
                self._send_json(200, {"totalTokens": len(json.dumps(body)) // 4})
                return
            reply = fake._next_reply(request)
            if reply is None:
                message = "FakeGemini: no scripted reply for this request"
                self._send_json(500, {"error": {"code": 500, "message": message}})
                return
            try:
                if reply.status != 200:
                    self._send_json(reply.status, reply.error_body or {})
                elif request.method == "streamGenerateContent":
                    self._stream(reply)
                else:
                    self._send_json(200, _merge(reply))
            finally:
                reply.finished.set()

        def _send_json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        def _stream(self, reply: Reply) -> None:
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
                        self._drop()
                        return
                    elif step.chunk is not None:
                        if step.delay_s:
                            time.sleep(step.delay_s)
                        self._write_chunk(f"data: {json.dumps(step.chunk)}\r\n\r\n".encode())
                reply.reached.set()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:
                pass  # the client went away (a stopped turn); nothing left to do

        def _write_chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _drop(self) -> None:
            reply_socket: socket.socket = self.connection
            with contextlib.suppress(OSError):
                reply_socket.shutdown(socket.SHUT_RDWR)

    return Handler


def _merge(reply: Reply) -> dict[str, Any]:
    """A non-streamed answer: the stream's parts merged into one response."""
    parts: list[dict[str, Any]] = []
    usage: dict[str, Any] | None = None
    for step in reply.steps:
        if step.chunk is None:
            continue
        for candidate in step.chunk.get("candidates", []):
            parts += candidate.get("content", {}).get("parts", [])
        usage = step.chunk.get("usageMetadata", usage)
    merged = _candidate_chunk(parts, finish="STOP")
    if usage:
        merged["usageMetadata"] = usage
    return merged


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    """A started FakeGemini, closed after the test (import this into a conftest to share it)."""
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def gemini_settings(settings: Settings, fake_gemini: FakeGemini) -> Settings:
    """The `settings` fixture pointed at the fake model, with a (fake) API key."""
    return settings.model_copy(
        update={"gemini_api_key": SecretStr("fake-key"), "gemini_base_url": fake_gemini.base_url}
    )
