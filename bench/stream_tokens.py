"""Benchmark: chat tokens end to end (fake model → session actor → edge → WebSocket client).

Runs the real stack on this machine: a local Ray, the edge under uvicorn, the session actor with
the real google-genai SDK pointed at the loopback FakeGemini, and a real WebSocket client. It
measures time to first token and tokens per second for long streamed answers, and the delay
between the model's last chunk and `chat_complete`.

    .venv/bin/python bench/stream_tokens.py [--tokens 5000] [--runs 3]

Results go to bench/results/stream_tokens.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from api import embedded_ray  # noqa: E402
from chatdf.settings import Settings  # noqa: E402
from tests.fakes.fake_gemini import FakeGemini  # noqa: E402
from tests.live import LiveServer  # noqa: E402


def one_run(server: LiveServer, fake: FakeGemini, tokens: int, n: int) -> dict[str, float]:
    token, _uid, client = server.login(f"bench-{n}@example.com")
    conv = client.post("/conversations").json()["id"]
    text = "".join(f"w{i} " for i in range(tokens))
    fake.script_text(text, chunks=tokens)
    with server.ws(token) as ws:
        started = time.perf_counter()
        r = client.post(f"/conversations/{conv}/messages", json={"content": "go"})
        assert r.status_code == 202, r.text
        first = None
        count = 0
        streamed = []
        while True:
            frame = ws.receive_json(timeout=120)
            if frame["type"] == "chat_token":
                count += 1
                streamed.append(frame["token"])
                if first is None:
                    first = time.perf_counter()
            elif frame["type"] == "chat_complete":
                done = time.perf_counter()
                break
    client.close()
    assert "".join(streamed) == text and first is not None
    return {
        "chat_token_events": count,
        "first_token_s": first - started,
        "total_s": done - started,
        "events_per_s": count / (done - first),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=5000, help="chunks the model streams")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    embedded_ray.start(
        num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="chatdf-bench"
    )
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, FakeGemini() as fake:
        settings = Settings(
            database_url=f"sqlite:///{tmp}/bench.db",
            data_dir=tmp,
            gemini_api_key=SecretStr("fake"),
            gemini_base_url=fake.base_url,
            ray_namespace="chatdf-bench",
        )
        server = LiveServer(settings).start()
        try:
            one_run(server, fake, 50, -1)  # warm-up: actor creation, SDK import
            for n in range(args.runs):
                results.append(one_run(server, fake, args.tokens, n))
                print(f"[bench] run {n + 1}/{args.runs}: {results[-1]}", flush=True)
        finally:
            server.stop()
    embedded_ray.stop()
    summary: dict[str, Any] = {
        "tokens_per_answer": args.tokens,
        "runs": args.runs,
        "events_per_s_median": statistics.median(r["events_per_s"] for r in results),
        "first_token_s_median": statistics.median(r["first_token_s"] for r in results),
        "total_s_median": statistics.median(r["total_s"] for r in results),
        "raw": results,
        "environment": {
            "python": platform.python_version(),
            "ray": ray.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
        },
    }
    out = ROOT / "bench" / "results" / "stream_tokens.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "raw"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
