"""The loopback fakes of bench/load.py: a paced Gemini that stamps each chunk, and a data server.

Run by bench/load.py as its own process (so its threads never share a GIL with the measuring
client or a server under test):

    .venv/bin/python bench/load_fakes.py --parquet FILE

It prints one JSON line `{"model_url": ..., "data_url": ...}` and serves until its standard input
closes (the parent ended) or it gets SIGTERM.

The model answers what the user message asks for. A message `bench {"chunks": 40, "gap_ms": 20}`
gets a text answer streamed in 40 chunks 20 ms apart; each chunk's text is `<EMIT> ` where EMIT
is the wall-clock time (`time.time()`, seconds) at which the chunk is written to the socket, so a
client can compute emit → receive latency of every `chat_token`. With `"sql": "SELECT ..."` the
first model call of the turn answers with one `execute_sql` call of that query instead, and the
call after its function response streams the paced text. It reuses tests/fakes/fake_gemini.py
(request parsing, SSE framing, error answers) and tests/fakes/fake_data_server.py.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.fake_data_server import FakeDataServer  # noqa: E402
from tests.fakes.fake_gemini import (  # noqa: E402
    FakeGemini,
    RecordedRequest,
    Reply,
    Step,
    _candidate_chunk,
    _make_handler,
    usage_chunk,
)

PREFIX = "bench "
DATA_PATH = "/bench.parquet"


class PacedReply(Reply):
    """A text answer whose chunks are made (and stamped) at the moment they are written."""

    def __init__(self, chunks: int, gap_s: float) -> None:
        super().__init__()
        self.chunks = max(1, chunks)
        self.gap_s = max(0.0, gap_s)


def stamped_chunk(last: bool) -> bytes:
    """One SSE event whose text is the current wall-clock time."""
    chunk = _candidate_chunk([{"text": f"<{time.time():.6f}> "}], finish="STOP" if last else None)
    if last:
        chunk["usageMetadata"] = usage_chunk(50, 40)
    return f"data: {json.dumps(chunk)}\r\n\r\n".encode()


def ask_of(request: RecordedRequest) -> tuple[dict[str, Any], bool]:
    """The bench options of the turn's user message, and whether a tool result follows it."""
    contents = request.contents
    last = contents[-1] if contents else {}
    answered = any("functionResponse" in p for p in last.get("parts", []))
    for content in reversed(contents):
        if content.get("role") != "user":
            continue
        for part in content.get("parts", []):
            text = part.get("text", "")
            if text.startswith(PREFIX):
                try:
                    options: dict[str, Any] = json.loads(text[len(PREFIX) :])
                except ValueError:
                    options = {}
                return options, answered
    return {}, answered


class PacedGemini(FakeGemini):
    """FakeGemini answering from the request itself (no script), with no request log kept."""

    def __init__(self) -> None:
        super().__init__()
        base = _make_handler(self)

        class Handler(base):  # type: ignore[valid-type,misc]
            def _stream(self, reply: Reply) -> None:
                if not isinstance(reply, PacedReply):
                    super()._stream(reply)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    start = time.monotonic()
                    for i in range(reply.chunks):
                        wait = start + i * reply.gap_s - time.monotonic()
                        if wait > 0:
                            time.sleep(wait)
                        self._write_chunk(stamped_chunk(i == reply.chunks - 1))
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    pass  # the client went away

        self._server.RequestHandlerClass = Handler
        self.requests_seen = 0

    def _record(self, request: RecordedRequest) -> None:
        self.requests_seen += 1  # countTokens; bodies are not kept (thousands of turns)

    def _next_reply(self, request: RecordedRequest) -> Reply | None:
        self.requests_seen += 1
        options, answered = ask_of(request)
        sql = options.get("sql")
        if isinstance(sql, str) and sql and not answered:
            call: dict[str, Any] = {
                "functionCall": {"name": "execute_sql", "args": {"query": sql}},
                "thoughtSignature": "c2lnbmF0dXJl",
            }
            last = _candidate_chunk([call], finish="STOP")
            last["usageMetadata"] = usage_chunk(50, 10)
            return Reply(steps=[Step(chunk=last)])
        return PacedReply(int(options.get("chunks", 40)), float(options.get("gap_ms", 20)) / 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--parquet", type=Path, required=True, help="the file served at /bench")
    args = parser.parse_args()
    model = PacedGemini().start()
    data = FakeDataServer().start()
    data_url = data.add(DATA_PATH, args.parquet)
    print(json.dumps({"model_url": model.base_url, "data_url": data_url}), flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())

    def until_stdin_closes() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    while not done.wait(0.5):
        pass
    model.close()
    data.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
