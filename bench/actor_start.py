"""What starting session actors costs, with forked workers (`WORKER_FORK_SERVER`) and without.

Each round is a fresh embedded Ray (as `chatdf serve` starts it, in a child process of this
script) with the fork server on or off, the rounds alternating in one invocation. A round
starts one session actor and waits until the node's fork server serves (so both modes begin
with one actor started and the same idle workers), then starts N session actors at once as
the edge's spare pool does (`start_unbound_actor` + `warm`: database connected, model SDK
imported) and reports: wall time until all N are warm, CPU seconds of every process of that
Ray (raylet, GCS, workers, fork servers), and PSS per session actor process and in all.

    .venv/bin/python bench/actor_start.py [--actors 20] [--rounds 2]
    # writes bench/results/actor_start.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "actor_start.json"


def pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def ray_processes(psutil: Any) -> list[Any]:
    """This process's descendants: the embedded Ray, and the fork server with its templates
    and every worker they forked."""
    return list(psutil.Process().children(recursive=True))


def cpu_of(procs: list[Any]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system + t.children_user + t.children_system
        except Exception:
            continue
    return out


def one_round(fork: bool, actors: int) -> dict[str, Any]:
    """In a child process: one embedded Ray, one mode."""
    import ray

    from actors.session_ray import start_unbound_actor
    from api import embedded_ray
    from api.app import fork_preload, node_slots, node_system_config
    from chatdf.db import Database
    from chatdf.settings import Settings

    psutil = __import__("psutil")  # Ray's own copy is on the path once Ray is imported
    data = tempfile.mkdtemp(prefix="chatdf-bench-start-")
    settings = Settings(data_dir=data, ray_namespace="bench-start", worker_fork_server=fork)
    Database(settings.resolved_database_url).create_schema()
    embedded_ray.start(
        fork_workers=fork,
        fork_preload=fork_preload(settings),
        num_cpus=os.cpu_count() or 2,
        resources=node_slots(settings),
        _system_config=node_system_config(settings),
        include_dashboard=False,
        namespace=settings.ray_namespace,
        log_to_driver=False,
    )
    try:

        def forked(handle: Any) -> bool:
            pid = ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=120)
            return "fork_server.py" in " ".join(
                psutil.Process(psutil.Process(pid).ppid()).cmdline()
            )

        # Warm-up, the same in both modes: actors started one at a time, at least 4 (past
        # Ray's prestarted idle workers), with the fork server until one comes from it.
        warmed = 0
        while warmed < 12:
            _name, handle = start_unbound_actor(settings)
            ray.get(handle.warm.remote(), timeout=120)
            warmed += 1
            if warmed >= 4 and (not fork or forked(handle)):
                break
            if fork:
                time.sleep(1)  # the server a plain start started is importing
        time.sleep(3)  # let the starts' background work settle before the window
        before = cpu_of(ray_processes(psutil))
        started = time.monotonic()
        handles = [start_unbound_actor(settings)[1] for _ in range(actors)]
        ray.get([h.warm.remote() for h in handles], timeout=600)
        wall = time.monotonic() - started
        procs = ray_processes(psutil)
        after = cpu_of(procs)
        cpu = sum(max(0.0, v - before.get(pid, 0.0)) for pid, v in after.items())
        actor_pss = [
            pss_mb(p.pid)
            for p in procs
            if p.is_running() and p.cmdline()[:1] == ["ray::SessionActor"]
        ]
        n_forked = sum(
            1
            for p in procs
            if p.cmdline()[:1] == ["ray::SessionActor"]
            and "fork_server.py" in " ".join(psutil.Process(p.ppid()).cmdline())
        )
        return {
            "fork_server": fork,
            "actors": actors,
            "warm_up_actors": warmed,
            "forked": n_forked,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "cpu_s_per_actor": round(cpu / actors, 3),
            "session_actor_processes": len(actor_pss),
            "pss_mb_per_session_actor": round(statistics.mean(actor_pss), 1) if actor_pss else None,
            "pss_mb_all": round(sum(pss_mb(p.pid) for p in procs), 1),
        }
    finally:
        embedded_ray.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", choices=["fork", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_round(args.one == "fork", args.actors)), flush=True)
        return
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        for mode in ("fork", "plain") if i % 2 == 0 else ("plain", "fork"):
            print(f"round {len(rounds) + 1}: {mode}, {args.actors} session actors ...", flush=True)
            done = subprocess.run(
                [sys.executable, __file__, "--one", mode, "--actors", str(args.actors)],
                capture_output=True,
                text=True,
                timeout=900,
                cwd=ROOT,
            )
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print("  ", result, flush=True)
            rounds.append(result)
    summary = {}
    for forking in (True, False):
        mine = [r for r in rounds if r["fork_server"] is forking]
        summary["fork" if forking else "plain"] = {
            key: round(statistics.median(r[key] for r in mine), 3)
            for key in ("wall_s", "cpu_s_per_actor", "pss_mb_per_session_actor", "pss_mb_all")
        }
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "median": summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
