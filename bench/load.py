"""Load benchmark: N users against `chatdf serve` and a single-process baseline, in one run.

    .venv/bin/python bench/load.py [--quick] [--levels turns-1 connect-200 ...]
                                   [--servers chatdf baseline] [--chunks 40] [--gap-ms 20]

It starts the loopback fakes (bench/load_fakes.py: a Gemini that streams paced chunks stamped
with their emit time, and a data server with a generated 1M-row Parquet file), then for each
server (the in-process baseline of bench/load_baseline.py first, then `chatdf serve` as a user
starts it: embedded Ray, a fresh DATA_DIR, GEMINI_API_KEY=fake) runs the levels below with one
asyncio client (httpx + websockets). Each level group gets a freshly started server.

| level | what happens |
|---|---|
| `turns-N` | N users (own sign-in, conversation, socket) post a turn each at once; again (warm) |
| `connect-N` | N signed-in users open their socket at once |
| `idle-N[+S]` | N users connect (100 at a time) and stay idle; then S of them (20) stream a turn |
| `sql-N` | N users with the Parquet file added each post a turn with one `execute_sql` at once |
| `loads-N` | N users each add the Parquet file (distinct URL each) at once |

Results: bench/results/load-<date>.json, bench/results/load.md, bench/results/load.png. Method
and the meaning of every figure: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = ROOT / ".venv" / "bin" / "python"
CHATDF = ROOT / ".venv" / "bin" / "chatdf"


def _import_psutil() -> Any:
    """psutil as Ray bundles it (ray/thirdparty_files), without importing Ray itself."""
    with contextlib.suppress(ImportError):
        import psutil

        return psutil
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("psutil is needed: it comes with Ray (ray/thirdparty_files)")
    sys.path.append(str(Path(next(iter(spec.submodule_search_locations))) / "thirdparty_files"))
    import psutil

    return psutil


psutil = _import_psutil()

FULL_LEVELS = [
    "turns-1",
    "turns-50",
    "turns-200",
    "connect-200",
    "idle-1000+20",
    "sql-1",
    "sql-20",
    "loads-20",
]
QUICK_LEVELS = [
    "turns-1",
    "turns-10",
    "connect-20",
    "idle-50+5",
    "sql-1",
    "sql-5",
    "loads-5",
]
GROUP_OF = {"turns": "turns", "connect": "connect", "idle": "idle", "sql": "data", "loads": "data"}
SQL = (
    "SELECT category, COUNT(*) AS n, SUM(value) AS total, AVG(qty) AS mean_qty "
    "FROM table1 GROUP BY category ORDER BY total DESC"
)
STAMP = re.compile(r"<(\d+\.\d+)>")
OPEN_TIMEOUT_S = 10.0  # the `websockets` default handshake timeout, as a user's client has it
SETUP_OPEN_TIMEOUT_S = 60.0  # sockets opened as set-up of another figure
# Past chatdf's SESSION_START_TIMEOUT_S (60 s): a call whose session start waited out that
# deadline is seen as its 503 (refused, never started), not as a client timeout whose turn the
# drain would then wait for in vain while the first round's actors go idle.
REQUEST_TIMEOUT_S = 75.0
SETUP_CONCURRENCY = 32
IDLE_BATCH = 100
# The machine is shared: a level is stopped when the server's tree holds more than this much, or
# the machine has less than this free (one actor process per user would take it all).
SERVER_PSS_CAP_BYTES = 10 * 1024**3
FREE_FLOOR_BYTES = 5 * 1024**3
SERVER_START_S = 120.0
SETTLE_S = 5.0  # after /health answers, before the first level: let pools warm as they would
# ... and then until the server is quiet: chatdf's warm-up (spares, task workers importing
# Polars) goes on ≈ 10 s past /health, and a level started meanwhile measured that warm-up.
QUIET_CPU_S_PER_S = 0.3  # the server's whole tree at rest: ≈ 0.1-0.15 (idle Ray workers)
QUIET_WINDOWS = 2  # consecutive 1 s windows under it
# ... plus this per live Ray worker: each burns 7-9 ms/s doing nothing (bench/idle_actor_cpu.py)
IDLE_WORKER_CPU_S_PER_S = 0.012
QUIET_LIMIT_S = 60.0


def log(message: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {message}", flush=True)


def pct(values: Iterable[float], q: float) -> float | None:
    """The q-quantile (0..1) with linear interpolation; None for no values."""
    data = sorted(values)
    if not data:
        return None
    k = (len(data) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def dist(values: list[float]) -> dict[str, Any]:
    return {
        "p50": pct(values, 0.5),
        "p99": pct(values, 0.99),
        "n": len(values),
        "max": max(values) if values else None,
    }


# Process accounting -------------------------------------------------------------------------


def pss_bytes(pid: int) -> int:
    """Proportional set size from /proc/<pid>/smaps_rollup (shared pages split among users)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def kind_of(proc: Any, root_pid: int) -> str:
    """`edge` for the server process, `ray::<Class>` for Ray workers, else the program name."""
    if proc.pid == root_pid:
        return "edge"
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "gone"
    title = str(cmd[0] if cmd else name)
    if title.startswith("ray::"):
        return title.split(" ", 1)[0].split(".", 1)[0]
    if name.startswith("python"):
        if "-c" in cmd:  # multiprocessing's forkserver, resource tracker
            return "python -c"
        return next((Path(a).name for a in cmd[1:] if not a.startswith("-")), str(name))
    return str(name)


class Meter:
    """CPU seconds and PSS of a server's whole process tree (edge, gcs, raylet, every worker)."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.root = psutil.Process(root_pid)

    def procs(self) -> list[Any]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu(self) -> dict[int, float]:
        """Per pid: user+system CPU seconds; under -pid, those of its children it has reaped
        (exited workers: a forked one is reaped by its template, not by the raylet)."""
        out: dict[int, float] = {}
        for p in self.procs():
            try:
                t = p.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            out[p.pid] = t.user + t.system
            reaped = t.children_user + t.children_system
            if reaped:
                out[-p.pid] = reaped
        return out

    @staticmethod
    def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(max(0.0, v - before.get(pid, 0.0)) for pid, v in after.items())

    def cpu_by_kind(self, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
        """The same CPU seconds split by process kind (edge, raylet, ray::SessionActor, ...)."""
        kinds = {p.pid: kind_of(p, self.root_pid) for p in self.procs()}
        kinds.update({-pid: f"{kind} (its exited children)" for pid, kind in list(kinds.items())})
        out: defaultdict[str, float] = defaultdict(float)
        for pid, v in after.items():
            out[kinds.get(pid, "gone")] += max(0.0, v - before.get(pid, 0.0))
        return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}

    def pss_total(self) -> int:
        return sum(pss_bytes(p.pid) for p in self.procs())

    def kinds(self) -> Counter[str]:
        """Processes of the tree by kind, without reading their memory (`memory()` reads every
        process's smaps_rollup: up to seconds under load)."""
        return Counter(kind_of(p, self.root_pid) for p in self.procs())

    def memory(self) -> dict[str, Any]:
        kinds: dict[str, list[int]] = {}
        for p in self.procs():
            kinds.setdefault(kind_of(p, self.root_pid), []).append(pss_bytes(p.pid))
        total = sum(sum(v) for v in kinds.values())
        actors = kinds.get("ray::SessionActor", [])
        return {
            "pss_mb": total / 2**20,
            "processes": sum(len(v) for v in kinds.values()),
            "session_actor_processes": len(actors),
            "session_actor_pss_mb_mean": sum(actors) / len(actors) / 2**20 if actors else None,
            "by_kind": {
                k: {"n": len(v), "pss_mb": round(sum(v) / 2**20, 1)}
                for k, v in sorted(kinds.items())
            },
        }

    def pids(self) -> list[tuple[int, float, str]]:
        out = []
        for p in self.procs():
            with contextlib.suppress(psutil.Error):
                out.append((p.pid, p.create_time(), kind_of(p, self.root_pid)))
        return out


# Servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server under test, started as its own process and stopped (with its tree) at the end."""

    name = "server"

    def __init__(self, tmp: Path, fakes: dict[str, str], group: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tmp / f"{self.name}-{group}"
        self.dir.mkdir(parents=True)
        self.fakes = fakes
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.meter: Meter | None = None
        self.leftovers: dict[str, int] = {}

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    async def start(self) -> None:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env(),
                cwd=self.dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_START_S
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/health")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer /health in {SERVER_START_S} s")
                await asyncio.sleep(0.2)
        self.meter = Meter(self.proc.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self) -> None:
        if self.proc is None:
            return
        tree = self.meter.pids() if self.meter else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            for _ in range(300):
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                log(f"{self.name} did not stop in 30 s after SIGTERM: killing it")
                self.proc.kill()
                self.proc.wait()
        # Processes of its tree (Ray's) still alive 10 s after it exited are killed, by pid.
        alive: list[tuple[Any, str]] = []
        for _ in range(100):
            alive = []
            for pid, created, kind in tree:
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(pid)
                    if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                        alive.append((p, kind))
            if not alive:
                break
            await asyncio.sleep(0.1)
        for p, _kind in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if alive:
            kinds = dict(Counter(kind for _p, kind in alive))
            self.leftovers = kinds
            log(
                f"{self.name}: {len(alive)} processes of its tree outlived it by 10 s "
                f"(killed): {kinds}"
            )


class ChatdfServer(Server):
    name = "chatdf"

    def command(self) -> list[str]:
        return [str(CHATDF), "serve", "--host", "127.0.0.1", "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_", "GEMINI_", "DATABASE_", "DATASET_"))
        }
        env.update(
            DATA_DIR=str(self.dir / "data"),
            GEMINI_API_KEY="fake",
            GEMINI_BASE_URL=self.fakes["model_url"],
            DATASET_ALLOW_PRIVATE_HOSTS="true",
            # Every simulated user signs in from 127.0.0.1; the default 30/minute per address
            # would refuse all but the first 30 dev logins.
            AUTH_RATE_LIMIT="1000000/minute",
            RAY_USAGE_STATS_ENABLED="0",
        )
        return env


class BaselineServer(Server):
    name = "baseline"

    def command(self) -> list[str]:
        (self.dir / "data").mkdir()
        return [
            str(PYTHON),
            str(ROOT / "bench" / "load_baseline.py"),
            "--port",
            str(self.port),
            "--model-url",
            self.fakes["model_url"],
            "--data-dir",
            str(self.dir / "data"),
        ]


# Client -----------------------------------------------------------------------------------


class Stopped(Exception):
    """The guard stopped the level while a request was in flight."""


@dataclass
class Turn:
    posted: float = 0.0
    accepted: float | None = None  # the POST's 202 arrived
    first: float | None = None
    complete: float | None = None
    error: str | None = None
    refused: bool = False  # answered with an error status: it never started server-side
    latencies: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ok(self) -> bool:
        """Completed (its chat_complete arrived) with no error."""
        return self.error is None and self.complete is not None


@dataclass
class User:
    email: str
    token: str = ""
    conversation: str = ""
    ws: ClientConnection | None = None
    reader: asyncio.Task[None] | None = None
    closing: bool = False
    turn: Turn | None = None
    datasets: dict[str, tuple[float, str | None]] = field(default_factory=dict)
    dataset_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Client:
    """The users' side: REST through one httpx client, one websockets connection per user."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.ws_url = server.url.replace("http://", "ws://") + "/ws"
        self.http = httpx.AsyncClient(
            base_url=server.url,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )
        self.close_codes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.users: list[User] = []
        self.stop = asyncio.Event()  # set by the guard: waiting ends, figures so far are kept

    async def aclose(self) -> None:
        await self.close_all()
        await self.http.aclose()

    def error(self, what: str) -> None:
        self.errors[what] += 1

    async def sign_up(self, email: str, conversation: bool) -> User | None:
        user = User(email=email)
        try:
            r = await self.http.post("/auth/dev-login", json={"email": email})
            if r.status_code != 200:
                self.error(f"dev-login {r.status_code}")
                return None
            user.token = r.json()["token"]
            if conversation:
                r = await self.http.post("/conversations", headers=user.auth)
                if r.status_code != 201:
                    self.error(f"POST /conversations {r.status_code}")
                    return None
                user.conversation = r.json()["id"]
        except httpx.HTTPError as exc:
            self.error(f"sign-up {type(exc).__name__}")
            return None
        self.users.append(user)
        return user

    async def sign_up_many(self, prefix: str, n: int, conversation: bool = True) -> list[User]:
        made = await bounded(
            [partial(self.sign_up, f"{prefix}-{i}@example.com", conversation) for i in range(n)]
        )
        return [u for u in made if u is not None]

    async def open(self, user: User, timeout: float) -> float | None:
        """Opens the user's socket; seconds to the open handshake, or None (counted as error)."""
        started = time.perf_counter()
        try:
            user.ws = await connect(
                f"{self.ws_url}?token={user.token}",
                open_timeout=timeout,
                ping_interval=None,
                max_size=2**22,
                close_timeout=2,
            )
        except TimeoutError:
            self.error("socket open timeout")
            return None
        except Exception as exc:  # noqa: BLE001 - counted, not fatal
            self.error(f"socket open {type(exc).__name__}")
            return None
        opened = time.perf_counter() - started
        user.reader = asyncio.get_running_loop().create_task(self.read(user))
        return opened

    async def read(self, user: User) -> None:
        ws = user.ws
        assert ws is not None
        try:
            async for raw in ws:
                now = time.time()
                event = json.loads(raw)
                kind = event.get("type")
                turn = user.turn
                if kind == "chat_token" and turn is not None:
                    if turn.first is None:
                        turn.first = now
                    stamp = STAMP.search(event.get("token", ""))
                    if stamp:
                        turn.latencies.append(now - float(stamp[1]))
                elif kind == "chat_complete" and turn is not None:
                    turn.complete = now
                    turn.done.set()
                elif kind == "chat_error" and turn is not None:
                    turn.error = f"chat_error: {event.get('error')}"
                    turn.done.set()
                elif kind in ("dataset_loaded", "dataset_error"):
                    error = event.get("error") if kind == "dataset_error" else None
                    user.datasets[event.get("dataset_id", "")] = (now, error)
                    user.dataset_event.set()
                elif kind == "ping":
                    await ws.send('{"type": "pong"}')
        except ConnectionClosed:
            pass
        finally:
            if not user.closing:
                self.close_codes[str(ws.close_code)] += 1
                if user.turn is not None and not user.turn.done.is_set():
                    user.turn.error = f"socket closed {ws.close_code}"
                    user.turn.done.set()

    async def close(self, user: User) -> None:
        user.closing = True
        if user.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(user.ws.close(), 3)
        if user.reader is not None:
            user.reader.cancel()
            with contextlib.suppress(BaseException):
                await user.reader
        user.ws = None

    async def close_all(self) -> None:
        users, self.users = self.users, []
        await bounded([partial(self.close, u) for u in users], 64)

    async def turn(self, user: User, options: dict[str, Any], deadline: float) -> Turn:
        turn = Turn()
        user.turn = turn
        turn.posted = time.time()
        try:
            r = await self.until_stopped(
                self.http.post(
                    f"/conversations/{user.conversation}/messages",
                    json={"content": "bench " + json.dumps(options)},
                    headers=user.auth,
                )
            )
        except Stopped:
            turn.error = "stopped by the guard"
        except httpx.TimeoutException as exc:
            # The turn may still run: its events are still timed, the turn counts as failed.
            turn.error = f"POST messages {type(exc).__name__}"
            await self.wait(turn.done, deadline, "")
        except httpx.HTTPError as exc:
            turn.error = f"POST messages {type(exc).__name__}"
        else:
            turn.accepted = time.time()
            if r.status_code != 202:
                turn.error = f"POST messages {r.status_code}"
                turn.refused = True
        if turn.error is None:
            turn.error = await self.wait(turn.done, deadline, "turn timeout")
        if turn.error:
            self.error(turn.error)
        return turn

    async def until_stopped(self, coro: Awaitable[Any]) -> Any:
        """Awaits `coro` unless the guard stops the level first (then raises Stopped)."""
        job = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({job, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not job.done():
            job.cancel()
            with contextlib.suppress(BaseException):
                await job
            raise Stopped
        return job.result()

    async def wait(self, event: asyncio.Event, deadline: float, timeout: str) -> str | None:
        """Waits for `event` until the deadline or the guard's stop; None, or why it ended."""
        while not event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return timeout
            if self.stop.is_set():
                return "stopped by the guard"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, 0.5))
        return None

    async def add_dataset(self, user: User, url: str, deadline: float) -> float | None:
        """POST → `dataset_loaded`, in seconds; None when it failed (counted as error)."""
        started = time.time()
        try:
            r = await self.until_stopped(
                self.http.post(
                    f"/conversations/{user.conversation}/datasets",
                    json={"url": url},
                    headers=user.auth,
                )
            )
        except Stopped:
            self.error("stopped by the guard")
            return None
        except httpx.HTTPError as exc:
            self.error(f"POST datasets {type(exc).__name__}")
            return None
        if r.status_code != 201:
            self.error(f"POST datasets {r.status_code}")
            return None
        dataset_id = r.json()["dataset_id"]
        while dataset_id not in user.datasets:
            user.dataset_event.clear()
            failed = await self.wait(user.dataset_event, deadline, "dataset timeout")
            if failed:
                self.error(failed)
                return None
        done, error = user.datasets[dataset_id]
        if error:
            self.error(f"dataset_error: {error}")
            return None
        return done - started


async def bounded(
    jobs: list[Callable[[], Awaitable[Any]]], limit: int = SETUP_CONCURRENCY
) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return list(await asyncio.gather(*(one(j) for j in jobs)))


# Levels -----------------------------------------------------------------------------------


@dataclass
class Level:
    name: str
    kind: str
    users: int
    streaming: int = 0

    @property
    def group(self) -> str:
        return GROUP_OF[self.kind]


def parse_level(text: str) -> Level:
    match = re.fullmatch(r"(turns|connect|idle|sql|loads)-(\d+)(?:\+(\d+))?", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a level: {text!r} (e.g. turns-50, idle-1000+20)")
    kind, users = match[1], int(match[2])
    streaming = int(match[3]) if match[3] else (min(20, users) if kind == "idle" else 0)
    return Level(text, kind, users, streaming)


@dataclass
class Options:
    chunks: int
    gap_ms: float
    data_url: str
    turn_deadline_s: float
    level_limit_s: float
    one_server: bool = False
    pss_cap_bytes: int = SERVER_PSS_CAP_BYTES


async def opened(client: Client, users: list[User], timeout: float) -> tuple[list[float], int]:
    times = await bounded([partial(client.open, u, timeout) for u in users])
    return [t for t in times if t is not None], sum(t is None for t in times)


async def turns(
    client: Client,
    meter: Meter,
    users: list[User],
    options: dict[str, Any],
    deadline_s: float,
    chunks: int,
) -> dict[str, Any]:
    """All `users` post one turn at once; what it cost and how the answers arrived."""
    connected = [u for u in users if u.ws is not None]
    cpu0 = meter.cpu()
    started = time.monotonic()
    deadline = started + deadline_s
    done = await asyncio.gather(*(client.turn(u, options, deadline) for u in connected))
    wall = time.monotonic() - started
    cpu1 = meter.cpu()
    cpu = Meter.cpu_between(cpu0, cpu1)
    ok = [t for t in done if t.ok]
    ended = [t for t in done if t.complete is not None]  # ok, or its POST timed out first
    latencies = [x for t in done for x in t.latencies]
    n = max(1, len(done))
    return {
        "turns": len(users),
        "completed": len(ok),
        "failed": len(users) - len(ok),
        "errors": dict(Counter(t.error for t in done if t.error)),
        "post_202_s": dist([t.accepted - t.posted for t in done if t.accepted is not None]),
        "first_token_s": dist([t.first - t.posted for t in done if t.first is not None]),
        "complete_s": dist([t.complete - t.posted for t in ended if t.complete is not None]),
        "token_latency_s": dist(latencies),
        "tokens_received": len(latencies),
        "tokens_expected": len(users) * chunks,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_s_per_turn": cpu / n,
        "cpu_ms_per_token": cpu / n / chunks * 1000,
        "cpu_s_by_kind": meter.cpu_by_kind(cpu0, cpu1),
    }


async def drain(client: Client, users: list[User], limit_s: float) -> dict[str, Any]:
    """Waits (up to limit_s) for turns the client gave up on to end server-side (not those
    the server refused, e.g. 503 busy: they never started).

    Their completion counts nowhere but here; it keeps the next round from meeting a 409.
    """
    late = [
        u.turn
        for u in users
        if u.turn is not None and not u.turn.done.is_set() and not u.turn.refused
    ]
    if not late:
        return {}
    started = time.monotonic()
    deadline = started + limit_s
    for turn in late:
        await client.wait(turn.done, deadline, "")
    ended = sum(t.done.is_set() for t in late)
    log(
        f"  {len(late)} turns the client gave up on; {ended} ended server-side within "
        f"{time.monotonic() - started:.0f} s more"
    )
    return {"gave_up_then_ended": ended, "gave_up_never_ended": len(late) - ended}


async def run_level(
    level: Level, server: Server, opts: Options, client: Client, out: dict[str, Any]
) -> None:
    """One level with its own client, its figures written into `out` as they come."""
    assert server.meter is not None
    meter = server.meter
    prefix = f"{server.name}-{level.name}-{int(time.time())}"
    ask = {"chunks": opts.chunks, "gap_ms": opts.gap_ms}
    try:
        if level.kind == "turns":
            users = await client.sign_up_many(prefix, level.users)
            times, failed = await opened(client, users, SETUP_OPEN_TIMEOUT_S)
            out["setup_open_s"] = {**dist(times), "failed": failed}
            await asyncio.sleep(1)
            out["memory_before"] = meter.memory()
            for round_ in ("first", "warm"):
                if client.stop.is_set():
                    break
                posting = users
                if round_ == "warm":
                    # Warm turns only: those of the users whose first turn completed (the
                    # others have no session yet), once the server is quiet again (starts
                    # refused or given up on in the first round may still be ending).
                    posting = [u for u in users if u.turn is not None and u.turn.ok]
                    settled = await settle(meter, time.monotonic())
                    log(f"{server.name} {level.name}: quiet after {settled:.1f} s")
                log(f"{server.name} {level.name}: {round_} round, {len(posting)} turns at once")
                # Whether the warm round is warm: the first round's actors may have exited
                # (ACTOR_IDLE_TIMEOUT_S) while the drain waited for turns the client gave up on.
                alive = meter.kinds()["ray::SessionActor"]
                out[round_] = await turns(
                    client, meter, posting, ask, opts.turn_deadline_s, opts.chunks
                )
                out[round_]["session_actors_at_start"] = alive
                out[round_]["memory_after"] = meter.memory()
                log(f"{server.name} {level.name} {round_}: {brief(out[round_])}")
                if round_ == "first":
                    out["first"].update(await drain(client, users, opts.turn_deadline_s))
        elif level.kind == "connect":
            users = await client.sign_up_many(prefix, level.users, conversation=False)
            before = meter.memory()
            log(f"{server.name} {level.name}: {len(users)} sockets opening at once")
            cpu0 = meter.cpu()
            results = await asyncio.gather(*(client.open(u, OPEN_TIMEOUT_S) for u in users))
            times = [t for t in results if t is not None]
            await asyncio.sleep(2)
            after = meter.memory()
            cpu1 = meter.cpu()
            out.update(
                open_s={**dist(times), "failed": sum(t is None for t in results)},
                cpu_s=Meter.cpu_between(cpu0, cpu1),
                cpu_s_by_kind=meter.cpu_by_kind(cpu0, cpu1),
                memory_before=before,
                memory_after=after,
                **idle_figures(before, after, len(times)),
            )
            log(
                f"{server.name} {level.name}: open p50 {ms(out['open_s']['p50'])} p99 "
                f"{ms(out['open_s']['p99'])}, {out['open_s']['failed']} failed, "
                f"{out['pss_per_idle_user_mb']:.2f} MB PSS per idle user"
            )
        elif level.kind == "idle":
            users = await client.sign_up_many(prefix, level.users, conversation=False)
            streamers = users[: level.streaming]
            for u in streamers:
                r = await client.http.post("/conversations", headers=u.auth)
                u.conversation = r.json()["id"] if r.status_code == 201 else ""
            before = meter.memory()
            times, failed = [], 0
            for i in range(0, len(users), IDLE_BATCH):
                if client.stop.is_set():
                    break
                batch = users[i : i + IDLE_BATCH]
                got = await asyncio.gather(*(client.open(u, OPEN_TIMEOUT_S) for u in batch))
                times += [t for t in got if t is not None]
                failed += sum(t is None for t in got)
                log(f"{server.name} {level.name}: {len(times)} sockets open, {failed} failed")
            await asyncio.sleep(3)
            after = meter.memory()
            out.update(
                open_s={**dist(times), "failed": failed},
                memory_before=before,
                memory_idle=after,
                **idle_figures(before, after, len(times)),
            )
            log(
                f"{server.name} {level.name}: {after['pss_mb']:.0f} MB PSS in total, "
                f"{out['pss_per_idle_user_mb']:.2f} MB per idle user, "
                f"{out['session_actors_for_idle']} session actor processes for them"
            )
            out["streaming"] = await turns(
                client,
                meter,
                [u for u in streamers if u.conversation],
                ask,
                opts.turn_deadline_s,
                opts.chunks,
            )
            out["streaming"]["memory_after"] = meter.memory()
            log(
                f"{server.name} {level.name} streaming {level.streaming}: {brief(out['streaming'])}"
            )
        elif level.kind == "sql":
            users = await client.sign_up_many(prefix, level.users)
            times, failed = await opened(client, users, SETUP_OPEN_TIMEOUT_S)
            deadline = time.monotonic() + opts.turn_deadline_s
            ready = await asyncio.gather(
                *(client.add_dataset(u, opts.data_url, deadline) for u in users if u.ws)
            )
            out["setup_dataset_ready_s"] = dist([t for t in ready if t is not None])
            await asyncio.sleep(1)
            log(f"{server.name} {level.name}: datasets ready; {len(users)} SQL turns at once")
            out["sql"] = await turns(
                client, meter, users, {**ask, "sql": SQL}, opts.turn_deadline_s, opts.chunks
            )
            out["sql"]["memory_after"] = meter.memory()
            log(f"{server.name} {level.name}: {brief(out['sql'])}")
        elif level.kind == "loads":
            users = await client.sign_up_many(prefix, level.users)
            await opened(client, users, SETUP_OPEN_TIMEOUT_S)
            # A first load per user (timed apart: a new user's load, its session starting too),
            # then the timed one on the now active sessions.
            deadline = time.monotonic() + opts.turn_deadline_s
            cold = await asyncio.gather(
                *(
                    client.add_dataset(u, f"{opts.data_url}?first={prefix}-{i}", deadline)
                    for i, u in enumerate(users)
                    if u.ws
                )
            )
            out["cold_ready_s"] = dist([t for t in cold if t is not None])
            log(
                f"{server.name} {level.name}: first loads (new users) ready p50 "
                f"{ms(out['cold_ready_s']['p50'])}; {len(users)} loads at once"
            )
            # As before the warm round: the new sessions' background work (spare refills,
            # model clients built) ends before the timed loads.
            settled = await settle(meter, time.monotonic())
            log(f"{server.name} {level.name}: quiet after {settled:.1f} s")
            cpu0 = meter.cpu()
            deadline = time.monotonic() + opts.turn_deadline_s
            ready = await asyncio.gather(
                *(
                    client.add_dataset(u, f"{opts.data_url}?load={prefix}-{i}", deadline)
                    for i, u in enumerate(users)
                    if u.ws
                )
            )
            cpu1 = meter.cpu()
            ok = [t for t in ready if t is not None]
            out.update(
                ready_s=dist(ok),
                loads=len(users),
                failed=len(users) - len(ok),
                cpu_s=Meter.cpu_between(cpu0, cpu1),
                cpu_s_by_kind=meter.cpu_by_kind(cpu0, cpu1),
                memory_after=meter.memory(),
            )
            log(
                f"{server.name} {level.name}: ready p50 {ms(out['ready_s']['p50'])} p99 "
                f"{ms(out['ready_s']['p99'])}, {out['failed']} failed"
            )
    finally:
        out["errors"] = dict(client.errors)
        out["close_codes"] = dict(client.close_codes)


def idle_figures(before: dict[str, Any], after: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "pss_per_idle_user_mb": (after["pss_mb"] - before["pss_mb"]) / max(1, n),
        "session_actors_for_idle": after["session_actor_processes"]
        - before["session_actor_processes"],
        "pss_total_mb": after["pss_mb"],
    }


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms"


def brief(r: dict[str, Any]) -> str:
    return (
        f"{r['completed']}/{r['turns']} complete, first token p50 {ms(r['first_token_s']['p50'])},"
        f" complete p50 {ms(r['complete_s']['p50'])} p99 {ms(r['complete_s']['p99'])}, "
        f"per-token p50 {ms(r['token_latency_s']['p50'])} p99 {ms(r['token_latency_s']['p99'])},"
        f" {r['cpu_s_per_turn']:.3f} CPU-s/turn"
        + (f", errors {r['errors']}" if r["errors"] else "")
    )


async def guarded(level: Level, server: Server, opts: Options) -> dict[str, Any]:
    """run_level under a time limit and memory guards; a failure is a result, not a crash.

    A tripped guard stops the waiting (figures so far are kept, the rest count as failed) and
    marks the level `aborted`; the sockets are closed in any case.
    """
    client = Client(server)
    out: dict[str, Any] = {"level": level.name, "users": level.users}
    task = asyncio.get_running_loop().create_task(run_level(level, server, opts, client, out))
    started = time.monotonic()
    reason: str | None = None
    checks = 0
    stopped_at = 0.0
    while not task.done():
        await asyncio.wait({task}, timeout=1.0)
        if task.done():
            break
        checks += 1
        if reason is None:
            pss = 0
            if server.meter and checks % 3 == 0:
                # In a thread: reading ~100 processes' smaps_rollup takes 0.1-1 s, which on
                # the event loop would delay the receive times (and so the latencies) measured.
                read_at = time.monotonic()
                pss = await asyncio.to_thread(server.meter.pss_total)
                if time.monotonic() - read_at > 0.5:
                    log(f"  (the guard's PSS read took {time.monotonic() - read_at:.1f} s)")
            if pss > opts.pss_cap_bytes:
                reason = f"stopped: the server held {pss / 2**30:.1f} GiB PSS (cap)"
            elif psutil.virtual_memory().available < FREE_FLOOR_BYTES:
                reason = "stopped: the machine ran low on free memory"
            elif time.monotonic() - started > opts.level_limit_s:
                reason = f"stopped: the level took longer than {opts.level_limit_s:.0f} s"
            elif server.proc is not None and server.proc.poll() is not None:
                reason = f"stopped: the server exited ({server.proc.returncode})"
            if reason:
                log(f"{server.name} {level.name}: {reason}")
                out["aborted"] = reason
                client.stop.set()
                stopped_at = time.monotonic()
        elif time.monotonic() - stopped_at > 30:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.done() and not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log(f"{server.name} {level.name}: failed: {exc!r}")
        out["aborted"] = f"failed: {exc!r}"
    await client.aclose()
    out["wall_s"] = time.monotonic() - started
    return out


def groups_of(levels: list[Level], one_server: bool) -> list[str]:
    """The level groups in order; each gets a freshly started server (`all`: one for all)."""
    if one_server:
        return ["all"]
    groups: list[str] = []
    for level in levels:
        if level.group not in groups:
            groups.append(level.group)
    return groups


async def settle(meter: Meter, started: float) -> float:
    """Waits until the server's tree uses less than QUIET_CPU_S_PER_S, plus what its live Ray
    workers burn idle, for QUIET_WINDOWS seconds in a row (at most QUIET_LIMIT_S); returns the
    seconds since `started`."""
    deadline = time.monotonic() + QUIET_LIMIT_S
    quiet = 0
    while quiet < QUIET_WINDOWS and time.monotonic() < deadline:
        workers = sum(n for kind, n in meter.kinds().items() if kind.startswith("ray::"))
        cpu0, t0 = meter.cpu(), time.monotonic()
        await asyncio.sleep(1.0)  # one measuring window
        rate = Meter.cpu_between(cpu0, meter.cpu()) / (time.monotonic() - t0)
        quiet = quiet + 1 if rate < QUIET_CPU_S_PER_S + workers * IDLE_WORKER_CPU_S_PER_S else 0
    return time.monotonic() - started


async def run_group(
    cls: type[Server],
    group: str,
    levels: list[Level],
    tmp: Path,
    fakes: dict[str, str],
    opts: Options,
    results: dict[str, Any],
) -> None:
    """Starts a server, runs the group's levels on it into `results`, stops it."""
    server = cls(tmp, fakes, group)
    log(f"starting {server.name} for the {group} levels on {server.url}")
    try:
        started = time.monotonic()
        await server.start()
        log(f"{server.name} answers /health after {time.monotonic() - started:.1f} s")
        await asyncio.sleep(SETTLE_S if cls is ChatdfServer else 0.5)
        assert server.meter is not None
        quiet_after = await settle(server.meter, started)
        cpu0 = server.meter.cpu()
        await asyncio.sleep(3)
        idle_cpu = Meter.cpu_between(cpu0, server.meter.cpu()) / 3
        results[f"_start_{group}"] = {
            "seconds": time.monotonic() - started,
            "quiet_after_s": quiet_after,
            "memory": server.meter.memory(),
            "idle_cpu_s_per_s": idle_cpu,
            "loadavg_1m": os.getloadavg()[0],
        }
        log(
            f"{server.name}: quiet {quiet_after:.1f} s after its start, "
            f"{results[f'_start_{group}']['memory']['pss_mb']:.0f} MB PSS "
            f"at rest, {idle_cpu:.3f} CPU-s/s while idle"
        )
        for level in (lv for lv in levels if group in ("all", lv.group)):
            results[level.name] = await guarded(level, server, opts)
            results[level.name]["loadavg_1m_after"] = os.getloadavg()[0]
    except Exception as exc:  # noqa: BLE001 - a server that will not start is a result
        log(f"{server.name} ({group}) failed: {exc!r}\n{server.log_tail()}")
        for level in (lv for lv in levels if group in ("all", lv.group)):
            results.setdefault(
                level.name, {"level": level.name, "aborted": f"server failed: {exc!r}"}
            )
    finally:
        await server.stop()
        if server.leftovers:
            results.setdefault("_leftover_processes", {})[group] = server.leftovers
        errors = server.log_tail(400).count("Traceback")
        if errors:
            results.setdefault("_server_tracebacks", {})[group] = errors
        mine = [results.get(lv.name, {}) for lv in levels if group in ("all", lv.group)]
        if errors or any(r.get("aborted") or r.get("errors") for r in mine):
            results.setdefault("_server_log_tail", {})[group] = server.log_tail(40)


# Report -----------------------------------------------------------------------------------


def get(d: Any, *path: str | None) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


FIGURES: list[tuple[str, tuple[str, ...], str]] = [
    # (label, path inside a level's result, unit) — what the table shows for each level kind
    ("POST → 202 p50", ("post_202_s", "p50"), "s"),
    ("POST → first token p50", ("first_token_s", "p50"), "s"),
    ("POST → chat_complete p50", ("complete_s", "p50"), "s"),
    ("POST → chat_complete p99", ("complete_s", "p99"), "s"),
    ("per-token latency p50", ("token_latency_s", "p50"), "s"),
    ("per-token latency p99", ("token_latency_s", "p99"), "s"),
    ("server CPU per turn", ("cpu_s_per_turn",), "cpu"),
    ("completed", ("completed",), "count"),
]


def rows_for(level: str, r: dict[str, Any]) -> list[tuple[str, tuple[str, ...], str]]:
    kind = level.split("-", 1)[0]
    if kind == "turns":
        return [
            (f"{rd}: {label}", (rd, *path), unit)
            for rd in ("first", "warm")
            for label, path, unit in FIGURES
        ] + [
            ("warm: turns posted (users whose first turn completed)", ("warm", "turns"), "count"),
            (
                "warm: session actor processes at its start (spares too)",
                ("warm", "session_actors_at_start"),
                "count",
            ),
            (
                "session actor processes after",
                ("warm", "memory_after", "session_actor_processes"),
                "count",
            ),
            ("PSS per session actor", ("warm", "memory_after", "session_actor_pss_mb_mean"), "mb"),
            ("server PSS after", ("warm", "memory_after", "pss_mb"), "mb"),
        ]
    if kind == "connect":
        return [
            ("socket open p50", ("open_s", "p50"), "s"),
            ("socket open p99", ("open_s", "p99"), "s"),
            ("sockets failed", ("open_s", "failed"), "count"),
            ("PSS per idle user", ("pss_per_idle_user_mb",), "mb"),
            ("session actor processes for them", ("session_actors_for_idle",), "count"),
        ]
    if kind == "idle":
        return [
            ("socket open p99", ("open_s", "p99"), "s"),
            ("sockets failed", ("open_s", "failed"), "count"),
            ("server PSS, all idle", ("pss_total_mb",), "mb"),
            ("PSS per idle user", ("pss_per_idle_user_mb",), "mb"),
            ("session actor processes for them", ("session_actors_for_idle",), "count"),
        ] + [(f"streaming: {label}", ("streaming", *path), unit) for label, path, unit in FIGURES]
    if kind == "sql":
        return [(label, ("sql", *path), unit) for label, path, unit in FIGURES]
    return [
        ("first load of a new user: ready p50", ("cold_ready_s", "p50"), "s"),
        ("ready p50", ("ready_s", "p50"), "s"),
        ("ready p99", ("ready_s", "p99"), "s"),
        ("loads failed", ("failed",), "count"),
    ]


def fmt(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "s":
        return f"{value * 1000:,.0f} ms" if value < 10 else f"{value:,.1f} s"
    if unit == "cpu":
        return f"{value:.3f} CPU-s"
    if unit == "mb":
        return f"{value:,.1f} MB"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def ratio(a: Any, b: Any, unit: str) -> str:
    if unit == "count" or not isinstance(a, int | float) or not isinstance(b, int | float):
        return ""
    if b <= 0:
        return ""
    return f"×{a / b:,.1f}"


def targets(results: dict[str, Any], quick: bool) -> list[tuple[str, str, str, str]]:
    """(issue, target, chatdf figure, met/missed) for the issue 8 and 9 targets."""
    c = results.get("chatdf", {})

    def of(kind: str) -> list[str]:
        found = [k for k in c if k.startswith(f"{kind}-")]
        return sorted(found, key=lambda k: int(re.split(r"[-+]", k)[1]))

    name = {kind: of(kind)[-1] for kind in GROUP_OF if of(kind)}
    turns = of("turns")
    big = turns[-1] if turns else None
    mid = "turns-50" if "turns-50" in c else (turns[-2] if len(turns) > 2 else big)
    out: list[tuple[str, str, str, str]] = []

    def check(
        issue: str, target: str, level: str | None, value: Any, ok: bool | None, shown: str
    ) -> None:
        ran = level is not None and level in c
        status = "—" if not ran else ("met" if ok else "missed")  # ran, nothing measured: missed
        if level and get(c, level, "aborted"):
            status, shown = "missed", f"{shown} ({c[level]['aborted']})"
        out.append(
            (
                issue,
                f"{target} ({level or 'not run'})",
                shown if value is not None else shown or "—",
                status,
            )
        )

    conn = name.get("connect")
    p99 = get(c, conn, "open_s", "p99") if conn else None
    failed = get(c, conn, "open_s", "failed") if conn else None
    check(
        "8",
        "users connecting at once: socket open p99 ≤ 100 ms",
        conn,
        p99,
        None if p99 is None else (p99 <= 0.1 and not failed),
        f"{fmt(p99, 's')}, {failed} failed",
    )
    idle = name.get("idle")
    total = get(c, idle, "pss_total_mb") if idle else None
    actors = get(c, idle, "session_actors_for_idle") if idle else None
    check(
        "8",
        "idle connected users: edge + Ray PSS ≤ 2 GB, no actor process for them",
        idle,
        total,
        None if total is None else (total <= 2048 and actors == 0),
        f"{fmt(total, 'mb')}, {actors} actor processes",
    )
    complete = get(c, big, "first", "completed") if big else None
    tok = get(c, big, "first", "token_latency_s", "p99") if big else None
    check(
        "8",
        "each user runs one turn at once: all complete, per-token p99 ≤ 500 ms",
        big,
        tok,
        None
        if complete is None
        else (complete == get(c, big, "first", "turns") and tok is not None and tok <= 0.5),
        f"{complete}/{get(c, big, 'first', 'turns')} complete, p99 {fmt(tok, 's')}",
    )
    first = get(c, mid, "first", "first_token_s", "p50") if mid else None
    check(
        "8",
        "concurrent turns: POST → first token p50 ≤ 500 ms",
        mid,
        first,
        None if first is None else first <= 0.5,
        fmt(first, "s"),
    )
    cold = get(c, "turns-1", "first", "first_token_s", "p50")
    warm = get(c, "turns-1", "warm", "first_token_s", "p50")
    gap = None if cold is None or warm is None else cold - warm
    check(
        "8",
        "cold first message: first token within 300 ms of a warm one",
        "turns-1" if "turns-1" in c else None,
        gap,
        None if gap is None else gap <= 0.3,
        f"cold {fmt(cold, 's')}, warm {fmt(warm, 's')}",
    )
    cpu = get(c, mid, "warm", "cpu_ms_per_token") if mid else None
    check(
        "9",
        "CPU per streamed token ≤ 1 ms (warm turns)",
        mid,
        cpu,
        None if cpu is None else cpu <= 1.0,
        "—" if cpu is None else f"{cpu:.2f} ms",
    )
    tok = get(c, mid, "warm", "token_latency_s", "p99") if mid else None
    check(
        "9",
        "concurrent warm turns: per-token p99 ≤ 50 ms",
        mid,
        tok,
        None if tok is None else tok <= 0.05,
        fmt(tok, "s"),
    )
    sql = name.get("sql")
    p50 = get(c, sql, "sql", "complete_s", "p50") if sql else None
    p99 = get(c, sql, "sql", "complete_s", "p99") if sql else None
    done = get(c, sql, "sql", "completed") if sql else None
    check(
        "9",
        "concurrent SQL turns on 1M rows: POST → complete p50 ≤ 2.5 s, p99 ≤ 3 s",
        sql,
        p50,
        None
        if p50 is None or p99 is None
        else (p50 <= 2.5 and p99 <= 3.0 and done == get(c, sql, "sql", "turns")),
        f"p50 {fmt(p50, 's')}, p99 {fmt(p99, 's')}, {done}/{get(c, sql, 'sql', 'turns')}",
    )
    loads = name.get("loads")
    ready = get(c, loads, "ready_s", "p50") if loads else None
    check(
        "9",
        "concurrent loads of the 15 MB Parquet: ready p50 ≤ 0.5 s",
        loads,
        ready,
        None if ready is None else ready <= 0.5 and not get(c, loads, "failed"),
        f"{fmt(ready, 's')}, {get(c, loads, 'failed')} failed",
    )
    pss = get(c, mid, "warm", "memory_after", "session_actor_pss_mb_mean") if mid else None
    check(
        "9",
        "PSS per active session actor ≤ 60 MB",
        mid,
        pss,
        None if pss is None else pss <= 60,
        fmt(pss, "mb"),
    )
    if quick:
        out = [(i, t + " [quick: smaller N than the target's]", v, s) for i, t, v, s in out]
    return out


def loads(res: dict[str, Any]) -> str:
    values = [
        v.get("loadavg_1m", v.get("loadavg_1m_after"))
        for server in res.values()
        for v in server.values()
        if isinstance(v, dict)
    ]
    numbers = [float(x) for x in values if isinstance(x, int | float)]
    return f"{min(numbers):.1f}–{max(numbers):.1f}" if numbers else "—"


def markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    c, b = res.get("chatdf", {}), res.get("baseline", {})
    lines = [
        f"# Load benchmark ({report['started'][:16].replace('T', ' ')} UTC"
        f"{', quick' if report['options']['quick'] else ''})",
        "",
        f"`bench/load.py`: {report['options']['chunks']} chunks "
        f"{report['options']['gap_ms']:g} ms apart per answer; {report['environment']['cpus']} "
        f"cores; chatdf at {report['git']}; run took {report['wall_s'] / 60:.1f} min. "
        "Ratio = chatdf / baseline (same run; each group of levels ran on the baseline, then "
        f"on chatdf). Machine 1-min load average at group starts and level ends: {loads(res)}. "
        "Method: bench/README.md.",
        "",
        "| level | figure | chatdf | baseline | ratio |",
        "|---|---|---|---|---|",
    ]
    for level in report["options"]["levels"]:
        rc, rb = c.get(level, {}), b.get(level, {})
        if rc.get("aborted") or rb.get("aborted"):
            lines.append(
                f"| {level} | run | {rc.get('aborted', 'ok')} | {rb.get('aborted', 'ok')} | |"
            )
        for label, path, unit in rows_for(level, rc or rb):
            va, vb = get(rc, *path), get(rb, *path)
            if va is None and vb is None:
                continue
            lines.append(
                f"| {level} | {label} | {fmt(va, unit)} | {fmt(vb, unit)} | {ratio(va, vb, unit)} |"
            )
        errs = {k: v for k, v in rc.get("errors", {}).items()}
        codes = rc.get("close_codes", {})
        if errs or codes:
            lines.append(
                f"| {level} | chatdf errors / close codes | {errs or '—'} / "
                f"{codes or '—'} | {rb.get('errors') or '—'} | |"
            )
    lines += [
        "",
        "## Targets (issues 8 and 9)",
        "",
        "| issue | target (level) | chatdf | |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {i} | {t} | {v} | {s} |" for i, t, v, s in targets(res, report["options"]["quick"])
    ]
    lines += ["", f"![latency and memory against N]({report['png']})", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Three panels against N: turn latencies, socket open p99, server PSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    ticks: list[set[int]] = [set(), set(), set()]

    def line(
        ax: int, pts: list[tuple[int, Any]], scale: float, style: str, color: str, label: str
    ) -> None:
        pts = sorted(p for p in pts if p[1] is not None)
        if pts:
            ticks[ax].update(p[0] for p in pts)
            axes[ax].plot(
                [p[0] for p in pts],
                [p[1] * scale for p in pts],
                style,
                color=color,
                marker="o" if ax != 1 else "s",
                label=label,
            )

    for server, color in (("chatdf", "tab:red"), ("baseline", "tab:blue")):
        r = {k: v for k, v in report["results"].get(server, {}).items() if not k.startswith("_")}
        turns = [(int(v["users"]), v) for k, v in r.items() if k.startswith("turns-")]
        for key, label, style in (
            (("warm", "token_latency_s", "p99"), "per-token p99 (warm turn)", "-"),
            (("warm", "token_latency_s", "p50"), "per-token p50 (warm turn)", ":"),
            (("first", "token_latency_s", "p99"), "per-token p99 (first turn)", "-."),
            (("first", "first_token_s", "p50"), "POST → first token p50 (first turn)", "--"),
        ):
            line(0, [(n, get(v, *key)) for n, v in turns], 1000, style, color, f"{server}: {label}")
        opens = [
            (int(v["users"]), get(v, "open_s", "p99"))
            for k, v in r.items()
            if k.split("-")[0] in ("connect", "idle")
        ]
        line(1, opens, 1000, "-", color, f"{server}: socket open p99")
        idle = [(int(v["users"]), get(v, "pss_total_mb")) for v in r.values()]
        line(2, idle, 1, "-", color, f"{server}: N idle connected users")
        active = [(n, get(v, "warm", "memory_after", "pss_mb")) for n, v in turns]
        line(2, active, 1, "--", color, f"{server}: after N users' turns")
        rest = [
            get(v, "memory", "pss_mb")
            for k, v in report["results"].get(server, {}).items()
            if k.startswith("_start")
        ]
        rest = [x for x in rest if x is not None]
        if rest:
            axes[2].axhline(
                min(rest), color=color, linestyle=":", linewidth=1, label=f"{server}: at rest"
            )
    titles = (
        "turn latency, N users at once",
        "socket open, N users at once",
        "server memory (PSS, whole process tree)",
    )
    for ax, title, ylabel, xs in zip(axes, titles, ("ms", "ms", "MB"), ticks, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("N users")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(sorted(xs))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize=7)
    fig.suptitle(
        f"bench/load.py, {report['started'][:10]}, {report['environment']['cpus']} cores: "
        "chatdf (red) vs single-process baseline (blue), same run",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# Main -------------------------------------------------------------------------------------


def make_parquet(path: Path, rows: int = 1_000_000) -> int:
    import polars as pl

    pl.select(
        event_id=pl.int_range(0, rows, dtype=pl.Int64).hash(9),
        category=pl.format("c{}", pl.int_range(0, rows).hash(1) % 50),
        value=(pl.int_range(0, rows).hash(2) % 100_000_000).cast(pl.Float64) / 100,
        qty=(pl.int_range(0, rows).hash(3) % 1000).cast(pl.Int32),
    ).write_parquet(path)
    return path.stat().st_size


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(need, soft)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < need:
        log(f"warning: the fd limit is {soft}, below the {need} this run needs")
    return soft


def git_describe() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


async def amain(args: argparse.Namespace) -> int:
    levels = [
        parse_level(x) for x in (args.levels or (QUICK_LEVELS if args.quick else FULL_LEVELS))
    ]
    most = max((lv.users for lv in levels), default=0)
    fds = raise_fd_limit(2 * most + 512)
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="chatdf-load-"))
    parquet = tmp / "bench.parquet"
    size = make_parquet(parquet)
    log(
        f"levels {[lv.name for lv in levels]}; servers {args.servers}; fd limit {fds}; "
        f"Parquet {size / 1e6:.1f} MB in {tmp}"
    )
    fakes_proc = subprocess.Popen(
        [str(PYTHON), str(ROOT / "bench" / "load_fakes.py"), "--parquet", str(parquet)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    results: dict[str, Any] = {}
    try:
        assert fakes_proc.stdout is not None
        fakes = json.loads(await asyncio.to_thread(fakes_proc.stdout.readline))
        opts = Options(
            chunks=args.chunks,
            gap_ms=args.gap_ms,
            data_url=fakes["data_url"],
            turn_deadline_s=args.turn_deadline,
            level_limit_s=args.level_limit,
            one_server=args.quick,
            pss_cap_bytes=int(args.pss_cap_gib * 2**30),
        )
        classes = {"baseline": BaselineServer, "chatdf": ChatdfServer}
        # Group by group, the servers one after the other: each pair ran under the same load.
        for group in groups_of(levels, opts.one_server):
            for name in args.servers:
                into = results.setdefault(name, {})
                await run_group(classes[name], group, levels, tmp, fakes, opts, into)
    finally:
        if fakes_proc.stdin:
            fakes_proc.stdin.close()
        try:
            fakes_proc.wait(10)
        except subprocess.TimeoutExpired:
            fakes_proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    report: dict[str, Any] = {
        "started": started_at.isoformat(),
        "wall_s": time.monotonic() - t0,
        "git": git_describe(),
        "options": {
            "quick": args.quick,
            "levels": [lv.name for lv in levels],
            "servers": args.servers,
            "chunks": args.chunks,
            "gap_ms": args.gap_ms,
            "parquet_bytes": size,
            "parquet_rows": 1_000_000,
            "sql": SQL,
            "turn_deadline_s": args.turn_deadline,
            "level_limit_s": args.level_limit,
        },
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        },
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = args.tag if args.tag is not None else ("quick" if args.quick else "")
    suffix = f"-{tag}" if tag else ""
    png = RESULTS / f"load{suffix}.png"
    report["png"] = png.name
    out = RESULTS / f"load-{started_at:%Y-%m-%d}{suffix}.json"
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path = RESULTS / f"load{suffix}.md"
    md_path.write_text(markdown(report))
    plot(report, png)
    log(
        f"wrote {out.relative_to(ROOT)}, {md_path.relative_to(ROOT)}, {png.relative_to(ROOT)} "
        f"after {report['wall_s'] / 60:.1f} min"
    )
    print(md_path.read_text())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: levels {' '.join(QUICK_LEVELS)} (about 2 min)",
    )
    parser.add_argument(
        "--levels",
        nargs="+",
        metavar="LEVEL",
        help=f"levels to run (default: {' '.join(FULL_LEVELS)})",
    )
    parser.add_argument(
        "--servers", nargs="+", choices=["baseline", "chatdf"], default=["baseline", "chatdf"]
    )
    parser.add_argument("--chunks", type=int, default=40, help="chunks per model answer")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="pause between chunks")
    parser.add_argument(
        "--turn-deadline",
        type=float,
        default=120.0,
        help="seconds a round of turns (or loads) may take; later is an error",
    )
    parser.add_argument(
        "--level-limit",
        type=float,
        default=360.0,
        help="seconds one level may take before it is aborted",
    )
    parser.add_argument(
        "--tag",
        help="results go to load-<date>-TAG.json, load-TAG.md, load-TAG.png "
        "(default: none; 'quick' with --quick)",
    )
    parser.add_argument(
        "--pss-cap-gib",
        type=float,
        default=SERVER_PSS_CAP_BYTES / 2**30,
        help="stop a level when the server's process tree holds more PSS than this",
    )
    args = parser.parse_args()
    for text in args.levels or []:
        parse_level(text)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(amain(args))
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
