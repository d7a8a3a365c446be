"""CPU per streamed item: a Ray streaming generator (actor → consumer process, as a session actor
streams events to an edge) against a plain pipe between two processes, in the same run.

Each item is one `chat_token`-sized event batch. Items are paced (`--gap-ms`, as a model streams)
or sent back to back (`--gap-ms 0`). CPU is read from both processes' counters (psutil), so the
figure is CPU per item on each side, not wall time.

    .venv/bin/python bench/stream_item_cost.py   # writes bench/results/stream_item_cost.json
"""

# ruff: noqa: I001  (ray must be imported before psutil, see below)
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import ray  # before psutil: Ray puts its bundled copy (ray/thirdparty_files) on sys.path
import psutil

EVENT = {
    "type": "chat_token",
    "conversation_id": "c" * 36,
    "message_id": "m" * 36,
    "token": "hello ",
}
RESULTS = Path(__file__).parent / "results" / "stream_item_cost.json"


def cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


@ray.remote(num_cpus=0)
class Streamer:
    def pid(self) -> int:
        return os.getpid()

    async def stream(self, n: int, gap_s: float) -> Any:
        for _ in range(n):
            if gap_s:
                await asyncio.sleep(gap_s)
            yield [(time.time(), EVENT)]


async def ray_run(n: int, gap_s: float) -> dict[str, float]:
    actor = Streamer.remote()  # type: ignore[attr-defined]
    producer = psutil.Process(ray.get(actor.pid.remote()))
    me = psutil.Process()
    p0, c0 = cpu_s(producer), cpu_s(me)
    stream = actor.stream.options(
        num_returns="streaming", _generator_backpressure_num_objects=8
    ).remote(n, gap_s)
    async for ref in stream:
        await ref
    p1, c1 = cpu_s(producer), cpu_s(me)
    ray.kill(actor)
    return {"producer_ms": 1e3 * (p1 - p0) / n, "consumer_ms": 1e3 * (c1 - c0) / n}


def _pipe_producer(conn: Any, n: int, gap_s: float) -> None:
    for _ in range(n):
        if gap_s:
            time.sleep(gap_s)
        conn.send([(time.time(), EVENT)])
    conn.send(None)


def pipe_run(n: int, gap_s: float) -> dict[str, float]:
    receiver, sender = multiprocessing.Pipe(duplex=False)
    proc = multiprocessing.Process(target=_pipe_producer, args=(sender, n, gap_s))
    me = psutil.Process()
    c0 = cpu_s(me)
    proc.start()
    producer = psutil.Process(proc.pid)
    p_last = 0.0
    while True:
        item = receiver.recv()
        if item is None:
            p_last = cpu_s(producer)
            break
    c1 = cpu_s(me)
    proc.join()
    return {"producer_ms": 1e3 * p_last / n, "consumer_ms": 1e3 * (c1 - c0) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: dict[str, Any] = {"items": args.items, "gap_ms": args.gap_ms}
    for gap_ms in (args.gap_ms, 0.0):
        gap_s = gap_ms / 1e3
        results[f"gap_{gap_ms:g}ms"] = {
            "ray_streaming_generator": asyncio.run(ray_run(args.items, gap_s)),
            "pipe_baseline": pipe_run(args.items, gap_s),
        }
        print(f"[stream_item_cost] gap {gap_ms:g} ms: {json.dumps(results[f'gap_{gap_ms:g}ms'])}")
    ray.shutdown()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"[stream_item_cost] wrote {RESULTS}")


if __name__ == "__main__":
    main()
