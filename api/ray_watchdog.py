"""Ends every process of an embedded Ray once the edge that started it is gone, however it died.

Ray ties GCS, raylet and workers to the driver, but its agents (`DashboardAgent`,
`RuntimeEnvAgent`) only poll for their raylet and then try to report its death to the GCS that
died with it; after `kill -9` of `chatdf serve` they were still running a minute later. So the
edge starts this script (plain standard library, run by path: no chatdf import) in its own
session, so a signal to the edge's process group does not stop it. It waits on the edge's pid
through a pidfd, records the edge's process tree every `SNAPSHOT_S` while it waits, and when
the edge exits sends SIGTERM, then SIGKILL after `GRACE_S`, to every recorded process still
alive (matched by pid and start time, so a reused pid is never hit) and to every process whose
command line names the Ray session's directory. Linux only (/proc); elsewhere it exits at once.

Usage: python ray_watchdog.py EDGE_PID SESSION_DIR
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from pathlib import Path

SNAPSHOT_S = 1.0
GRACE_S = 2.0
ROUNDS = 5  # a dying raylet may still start a worker: look again, a few times

Proc = tuple[int, int]  # (pid, start time in clock ticks since boot)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live, non-zombie process; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(root: int) -> set[Proc]:
    """Every live process under `root` (not `root`, not this watchdog)."""
    children: dict[int, list[Proc]] = {}
    for pid in _all_pids():
        info = _stat(pid)
        if info is not None:
            children.setdefault(info[0], []).append((pid, info[1]))
    found: set[Proc] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child[0] != os.getpid() and child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def in_session(session_dir: str) -> set[Proc]:
    """Every live process whose command line names the Ray session's directory."""
    found: set[Proc] = set()
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        info = _stat(pid)
        if info is not None and session_dir.encode() in cmdline:
            found.add((pid, info[1]))
    return found


def alive(procs: set[Proc]) -> set[Proc]:
    return {p for p in procs if (info := _stat(p[0])) is not None and info[1] == p[1]}


def _signal(procs: set[Proc], sig: signal.Signals) -> None:
    for pid, _ in alive(procs):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def end_all(recorded: set[Proc], session_dir: str) -> set[Proc]:
    """SIGTERM, then SIGKILL after the grace period; returns what is still alive (none)."""
    for _ in range(ROUNDS):
        targets = alive(recorded) | in_session(session_dir)
        if not targets:
            return set()
        _signal(targets, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while alive(targets) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal(targets, signal.SIGKILL)
        recorded = alive(recorded | targets)
        deadline = time.monotonic() + GRACE_S
        while alive(recorded) and time.monotonic() < deadline:
            time.sleep(0.1)
    return alive(recorded) | in_session(session_dir)


def watch(edge: int, session_dir: str) -> None:
    try:
        handle = os.pidfd_open(edge)
    except (AttributeError, OSError):  # no pidfd (old kernel), or the edge is already gone
        handle = -1
    recorded: set[Proc] = set()
    while True:
        if handle >= 0:
            ready, _, _ = select.select([handle], [], [], SNAPSHOT_S)
            gone = bool(ready)
        else:
            time.sleep(SNAPSHOT_S)
            gone = _stat(edge) is None
        if gone:
            break
        recorded = alive(recorded) | descendants(edge)
    end_all(recorded, session_dir)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not sys.platform.startswith("linux"):
        return 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C at a terminal: the edge handles it
    watch(int(argv[1]), argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
