"""The Ray tasks (dataset load, SQL) and their actor-side callers, free of Polars by design.

A session actor runs in its own process per user; Polars there would cost ~25 MB RSS and its
thread pools each (measured). So this module, which the actor imports, only submits and awaits
tasks: the task bodies import the worker-side code (`actors.dataset_task`, `actors.sql_task`, which
load Polars and PyArrow) when they run, inside a Ray worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray.exceptions import OutOfMemoryError, RayError, TaskCancelledError, WorkerCrashedError

from actors.gateway import FAILED, caller_watch, forget, gateway
from actors.handover import actor_gone
from actors.observe import sql_run
from actors.version import deploy_version
from chatdf import tracing
from chatdf.errors import ChatdfError, SqlFailed
from chatdf.settings import Settings

log = logging.getLogger(__name__)

# Task bodies: these run in Ray workers, which is where the engine gets imported -----------


def load_dataset(url: str, settings: Settings, owner: str = "") -> dict[str, Any]:
    """Describe a dataset URL (`actors.dataset_task.inspect_dataset`) inside a worker; a
    download counts against `owner`'s share of the node's cache."""
    from actors.dataset_task import inspect_dataset

    with _portable_errors():
        return inspect_dataset(url, settings, owner=owner)


def sql_task(
    sql: str,
    tables: list[dict[str, Any]],
    settings: Settings,
    trace: dict[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Run SQL inside a worker (`actors.sql_task.stream_sql`): the rows first, then the count.

    Named so that its worker process shows as `ray::sql_task`. `trace`: the caller's span
    (OTEL_ENABLED), the parent of this run's.
    """
    from actors.sql_task import stream_sql

    with _portable_errors(), tracing.span(settings, "sql.execute", carrier=trace):
        yield from stream_sql(sql, tables, settings)


WARM_LINGER_S = 1.0  # a warm-up stays busy this long, so the others land on other workers


def warm_worker(linger_s: float = WARM_LINGER_S) -> int:
    """Readies one task worker ahead of demand: Polars, the load and query code and the SQL
    guard's parser (sqlglot's DuckDB dialect loads at its first parse) imported, the query fork
    server started. Returns the worker's pid. Named so it shows as
    `ray::warm_worker`; the worker then idles and takes later loads and queries.

    It lingers before returning: a warm-up on an already warm worker ends in milliseconds, and
    Ray would hand the next one the same worker instead of readying another."""
    import os
    import time

    import polars  # noqa: F401  # the import is the point
    import pyarrow.parquet  # noqa: F401

    from actors import dataset_task, sql_task  # noqa: F401
    from actors.sql_guard import check_sql
    from actors.sql_sandbox import start_fork_server

    check_sql("SELECT 1 AS one FROM t", ["t"], 100)
    start_fork_server()
    time.sleep(linger_s)
    return os.getpid()


warm_worker_task = ray.remote(num_cpus=0, max_retries=0)(warm_worker)


def warm_task_workers(count: int) -> list[Any]:
    """Starts `count` warm-up tasks at once (so Ray starts about as many workers); returns
    their refs. No slot is taken: a real load or query never waits behind a warm-up."""
    return [warm_worker_task.remote() for _ in range(count)]


load_dataset_task = ray.remote(max_retries=0, num_cpus=0.5)(load_dataset)
run_sql_task = ray.remote(num_returns="streaming", max_retries=0, retry_exceptions=False)(sql_task)

# Custom Ray resources that bound concurrent work per node (docs/sql.md, "Slots"). A node that
# advertises them (the embedded Ray does; a cluster node with `ray start --resources`) runs
# that many queries / loads at once, each with no CPU reserved: a footer read is I/O, and a
# query's Polars threads share the node's cores. Without them, the CPU shapes above apply.
QUERY_SLOT = "chatdf_query"
LOAD_SLOT = "chatdf_load"
_SLOTS_RECHECK_S = 30.0
GATEWAY_MARGIN_S = 5.0  # a gateway's own limit on a task, past the caller's
_slots_found: set[str] = set()  # resources the cluster has (nodes do not lose them)
_slots_absent_at: dict[str, float] = {}  # resource -> when it was last looked for, absent
_user_queries: asyncio.Semaphore | None = None  # this process is one user's session actor


def slot_options(resource: str) -> dict[str, Any]:
    """Task options that take one `resource` slot instead of CPU, when the cluster has it."""
    if resource not in _slots_found:
        now = time.monotonic()
        if now - _slots_absent_at.get(resource, -_SLOTS_RECHECK_S) >= _SLOTS_RECHECK_S:
            if resource in ray.cluster_resources():  # type: ignore[no-untyped-call]
                _slots_found.add(resource)
            else:
                _slots_absent_at[resource] = now
    if resource in _slots_found:
        return {"num_cpus": 0, "resources": {resource: 1}}
    return {}


def _user_query_slots(settings: Settings) -> asyncio.Semaphore:
    global _user_queries
    if _user_queries is None:
        _user_queries = asyncio.Semaphore(max(1, settings.query_max_concurrent_per_user))
    return _user_queries


@contextlib.contextmanager
def _portable_errors() -> Iterator[None]:
    """Make sure no exception that reaches the caller needs Polars to be unpickled.

    Ray pickles a task's exception by class, so a Polars (or PyArrow) exception escaping a task
    would make the session actor import Polars just to unpickle it. Our own errors and builtins
    pass unchanged; anything else becomes a RuntimeError naming it (the cause stays in Ray's
    traceback text, which is built in the worker).
    """
    try:
        yield
    except Exception as exc:
        if isinstance(exc, ChatdfError) or type(exc).__module__ == "builtins":
            raise
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        raise RuntimeError(f"{kind}: {exc}") from exc


# The caller's side: refuse early, submit, wait within the time limit, cancel on the way out ---


async def run_sql(sql: str, tables: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Check `sql`, run it as a Ray task on `tables` ({name, url, format}) and return the result.

    Raises SqlRefused, SqlFailed (engine error, time limit, memory) or the DatasetError of a
    table that could not be fetched. Every check (sqlglot's and the Polars cross-check) runs in
    the task, before it reads anything: the session actor imports no SQL parser (≈ 8 MB and a
    first-query import per actor), and a refusal costs one call to a warm worker.
    """
    with sql_run(settings):  # duration, outcome, failures; a span when tracing
        async with _user_query_slots(settings):  # QUERY_MAX_CONCURRENT_PER_USER
            return await _run_task(sql, tables, settings)


async def _run_task(sql: str, tables: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Submit (through an edge's task gateway, `actors.gateway`), wait for a node's query slot
    (bounded), then run within QUERY_TIMEOUT_S: the time limit starts when the query starts, so
    waiting for a slot never eats it. A gateway that dies on the way costs one more try."""
    options = {"memory": settings.query_memory_bytes, **slot_options(QUERY_SLOT)}
    trace = tracing.inject() if settings.otel_enabled else None
    args = (sql, tables, settings.for_tasks(), trace)
    deadline_s = settings.query_queue_timeout_s + settings.query_timeout_s + GATEWAY_MARGIN_S
    for tries_left in (1, 0):
        via = await _gateway_or_none(settings)
        try:
            with caller_watch() as caller:
                if via is None:
                    task = run_sql_task.options(**options).remote(*args)
                else:
                    task = via.run_sql.options(num_returns="streaming").remote(
                        options, args, deadline_s, caller
                    )
                return await _follow_sql(task, via, settings)
        except RayError as exc:
            if _try_another(exc, via, settings, tries_left, "query"):
                continue
            raise _explain_ray_error(exc) from None
    raise AssertionError("unreachable")


async def _follow_sql(task: Any, via: Any, settings: Settings) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    started = False
    try:
        first = await _next_item(task, settings.query_queue_timeout_s)  # the worker began
        if first is None or first["kind"] != "started":
            raise SqlFailed("The query ended without a result")
        started = True
        deadline = loop.time() + settings.query_timeout_s
        first = await _next_item(task, deadline - loop.time())
        if first is None:
            raise SqlFailed("The query ended without a result")
        if first["kind"] == "error":
            raise first["exception"]
        result = {k: v for k, v in first.items() if k != "kind"}
        if result["truncated"]:
            result["total_rows"] = await _count_or_none(task, via, deadline - loop.time())
        return result
    except TimeoutError:
        _cancel(task, via)
        if not started:
            raise SqlFailed(
                f"No query slot was free within {_seconds(settings.query_queue_timeout_s)}; "
                "the service is busy, try again"
            ) from None
        raise SqlFailed(
            f"The query took longer than {_seconds(settings.query_timeout_s)} and was cancelled"
        ) from None
    except asyncio.CancelledError:  # the turn was stopped: do not leave the query running
        _cancel(task, via)
        raise


async def load_url(url: str, settings: Settings, owner: str) -> dict[str, Any]:
    """Runs `load_dataset_task` for `url` through a task gateway (or directly without one),
    within DATASET_TOTAL_TIMEOUT_S. Raises the task's error, TimeoutError past the limit."""
    options = slot_options(LOAD_SLOT)
    args = (url, settings.for_tasks(), owner)
    limit_s = settings.dataset_total_timeout_s + GATEWAY_MARGIN_S
    for tries_left in (1, 0):
        via = await _gateway_or_none(settings)
        try:
            with caller_watch() as caller:
                if via is None:
                    ref = load_dataset_task.options(**options).remote(*args)
                else:
                    ref = via.load_dataset.remote(options, args, limit_s, caller)
                try:
                    # Not asyncio.wait_for: on Python 3.11 it awaits in another task and can
                    # lose a cancel (the dataset deleted) that lands as the load finishes.
                    async with asyncio.timeout(limit_s):
                        result: dict[str, Any] = await ref
                except (TimeoutError, asyncio.CancelledError):
                    _cancel(ref, via)
                    raise
        except RayError as exc:
            if _try_another(exc, via, settings, tries_left, "load"):
                continue
            raise
        if result.get("kind") == FAILED:
            raise result["exception"]
        return result
    raise AssertionError("unreachable")


def _try_another(exc: RayError, via: Any, settings: Settings, tries_left: int, what: str) -> bool:
    """After `exc` from a call through gateway `via`: forgets a dead gateway; True when the
    call should be made again (through another gateway, or directly if none is left)."""
    if via is None or not actor_gone(exc):
        return False
    forget(settings.ray_namespace, deploy_version(settings), via)
    if tries_left:
        log.info("task gateway gone (%s); the %s tries another", type(exc).__name__, what)
    return tries_left > 0


async def _gateway_or_none(settings: Settings) -> Any:
    """The gateway of this deploy, or None (no edge of it is up, or looking failed): the
    caller then submits the task itself."""
    try:
        return await gateway(settings.ray_namespace, deploy_version(settings))
    except Exception as exc:  # NoGateway, or the GCS did not answer the lookup
        log.debug("no task gateway (%s); the task is submitted directly", type(exc).__name__)
        return None


def _cancel(task: Any, via: Any) -> None:
    """Stops a task (`via` None) or a gateway call, whose gateway then force-stops the task.

    Ray force-cancels tasks only, not actor calls; and the gateway call's cancel must not be
    recursive: Ray would first pass a soft cancel on to the task (a KeyboardInterrupt that a
    blocking read never sees), after which the gateway's force-cancel does nothing (checked)."""
    try:
        ray.cancel(task, force=via is None, recursive=via is None)
    except Exception:  # already finished or gone
        log.debug("cancel of a finished task ignored")


async def _count_or_none(task: Any, via: Any, timeout_s: float) -> int | None:
    """The full row count if it arrives in time; else the count is stopped and reported unknown."""
    try:
        item = await _next_item(task, timeout_s)
    except TimeoutError:
        _cancel(task, via)
        return None
    except RayError:  # e.g. the worker was stopped for memory while counting: keep the rows
        return None
    return item["total_rows"] if item is not None else None


async def _next_item(task: Any, timeout_s: float) -> dict[str, Any] | None:
    if timeout_s <= 0:
        raise TimeoutError
    try:
        # asyncio.timeout, not wait_for: a cancel (the turn stopped) is never lost (3.11).
        async with asyncio.timeout(timeout_s):
            ref = await task.__anext__()
    except StopAsyncIteration:
        return None
    item: dict[str, Any] = await ref
    if item.get("kind") == FAILED:  # the task's own Ray error, relayed by a gateway
        raise item["exception"]
    return item


def _explain_ray_error(exc: RayError) -> ChatdfError:
    """A sentence for the client; Ray's text (tracebacks, paths, pids, node addresses) goes
    to the log only, never into `details`."""
    if isinstance(exc, TaskCancelledError):
        return SqlFailed("The query was cancelled")
    log.warning("SQL task failed: %s", exc)
    if isinstance(exc, OutOfMemoryError):
        return SqlFailed(
            "The query needed more memory than allowed and was stopped",
            "the node ran low on memory; try a query that reads less",
        )
    if isinstance(exc, WorkerCrashedError):
        return SqlFailed("The query engine stopped unexpectedly")
    return SqlFailed("The query failed unexpectedly")


def _seconds(value: float) -> str:
    return f"{value:g} second" + ("" if value == 1 else "s")
