"""CPU an idle Ray actor process burns doing nothing, split by thread, against idle plain Python
processes in the same run.

The figure behind `ACTOR_IDLE_TIMEOUT_S`'s default (docs/architecture.md, "Life cycle"): an
actor kept alive after its user's last call costs this much per second until it exits, against
the CPU of starting a new one when the user comes back. N bare actors (`num_cpus=0`, no method
running) are measured over a window once started; then N `multiprocessing` processes blocked
on a pipe, the same way. Per-thread CPU is read from `/proc/<pid>/task/*/stat` (Linux).

    .venv/bin/python bench/idle_actor_cpu.py   # writes bench/results/idle_actor_cpu.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import ray

RESULTS = Path(__file__).parent / "results" / "idle_actor_cpu.json"
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of a process, keyed `main` for its main thread, else its name."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # a thread that ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        key = "main" if int(task.name) == pid else name
        out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime
    return dict(out)


def measure(pids: list[int], seconds: float) -> dict[str, Any]:
    before = {pid: thread_cpu(pid) for pid in pids}
    started = time.monotonic()
    time.sleep(seconds)  # the window measured: nothing else to wait for
    after = {pid: thread_cpu(pid) for pid in pids}
    wall = time.monotonic() - started
    by_thread: dict[str, float] = {}
    for pid in pids:
        for name, cpu in after[pid].items():
            by_thread[name] = by_thread.get(name, 0.0) + cpu - before[pid].get(name, 0.0)
    per_process = sum(by_thread.values()) / len(pids) / wall
    return {
        "processes": len(pids),
        "wall_s": round(wall, 2),
        "cpu_ms_per_s_per_process": round(per_process * 1000, 2),
        "by_thread_ms_per_s_per_process": {
            name: round(cpu / len(pids) / wall * 1000, 2)
            for name, cpu in sorted(by_thread.items(), key=lambda kv: -kv[1])
            if cpu > 0
        },
    }


@ray.remote(num_cpus=0)
class Idle:
    def pid(self) -> int:
        return os.getpid()


def _wait(conn: Any) -> None:
    conn.recv()  # blocks until the parent says stop


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0, help="the window measured")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the starts")
    args = parser.parse_args()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    actors = [Idle.remote() for _ in range(args.processes)]  # type: ignore[attr-defined]
    pids = ray.get([a.pid.remote() for a in actors])
    time.sleep(args.settle)  # past the start's own work
    ray_idle = measure(pids, args.seconds)
    ray.shutdown()

    ends, procs = [], []
    for _ in range(args.processes):
        parent, child = multiprocessing.Pipe()
        proc = multiprocessing.Process(target=_wait, args=(child,))
        proc.start()
        ends.append(parent)
        procs.append(proc)
    time.sleep(args.settle)
    plain_idle = measure([p.pid for p in procs if p.pid is not None], args.seconds)
    for end in ends:
        end.send(None)
    for proc in procs:
        proc.join()

    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ray": ray.__version__,
        "cpus": os.cpu_count(),
        "ray_actor": ray_idle,
        "plain_process": plain_idle,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    for name in ("ray_actor", "plain_process"):
        r = report[name]
        print(f"{name}: {r['cpu_ms_per_s_per_process']} ms/s per idle process", flush=True)
        print(f"  by thread: {r['by_thread_ms_per_s_per_process']}", flush=True)
    print(f"wrote {RESULTS}", flush=True)


if __name__ == "__main__":
    main()
