"""The SQL task's work in a Ray worker: check in full, fetch the tables read, run confined.

`actors.tasks.run_sql_task` calls `stream_sql`; the query itself runs in a fresh process that
can read only its tables (`actors.sql_sandbox`), on the pure core in `actors.sql`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from typing import Any

from actors.sql_child import QueryLimits, QueryTable
from actors.sql_sandbox import run_confined, start_fork_server
from chatdf.errors import DETAILS_MAX_CHARS, ChatdfError, SqlFailed
from chatdf.settings import Settings

FILE_DISAPPEARED = "A dataset file disappeared while the query ran; try again"
SANDBOX_DENIED = "The query tried to read something other than its tables and was stopped"


def stream_sql(
    sql: str, tables: list[dict[str, Any]], settings: Settings
) -> Iterator[dict[str, Any]]:
    """Yields {"kind": "started"}, {"kind": "rows", ...result}, then when truncated
    {"kind": "count", total_rows}.

    Two items so that the caller has the rows even when the full count does not finish in
    time. Failures are yielded as {"kind": "error", "exception": ChatdfError}. The query runs
    in a confined process (`actors.sql_sandbox`) that can read only the tables it names.
    """
    # A cold worker's first query starts its fork server (a Python that imports Polars, about
    # a second, more on a busy node) before the time limit starts, as waiting for a slot does.
    start_fork_server()
    yield {"kind": "started"}  # the caller's time limit starts now, not while queued
    with contextlib.closing(_run(sql, tables, settings)) as items:
        try:
            _, result = next(items, ("rows", None))
            if result is None:
                raise SqlFailed("The query ended without a result")
        except ChatdfError as exc:
            yield {"kind": "error", "exception": exc}
            return
        yield {"kind": "rows", **result}
        if result["truncated"]:
            try:
                _, total = next(items, ("count", None))
            except ChatdfError:  # the count failed; the rows stand
                total = None
            yield {"kind": "count", "total_rows": total}


def _run(
    sql: str, tables: list[dict[str, Any]], settings: Settings
) -> Generator[tuple[str, Any], None, None]:
    """The confined process's items; a node-local copy that went between being handed out and
    being opened (a refresh of the dataset replaced it) is fetched again, once."""
    # The task checks again, in full: it does the I/O and must not trust its caller, and the
    # Polars cross-check runs only here (the session actor does not load Polars).
    from actors.sql_guard import check_sql  # here, not at import: the session actor loads this

    by_name = {t["name"]: t for t in tables}
    used = [by_name[name] for name in check_sql(sql, list(by_name), settings.max_sql_chars)]
    retries_left = 1
    while True:
        files = [_local_table(table, settings) for table in used]
        with contextlib.closing(_run_confined(sql, files, settings)) as items:
            for kind, value in items:
                if kind != "missing":
                    yield kind, value
                    retries_left = 0  # rows went out: a later loss is not retried
                    continue
                if retries_left == 0:
                    raise SqlFailed(FILE_DISAPPEARED, value)
                retries_left -= 1
                break
            else:
                return


def _local_table(table: dict[str, Any], settings: Settings) -> QueryTable:
    from actors.dataset_task import ensure_local

    path = ensure_local(
        table["url"],
        table["format"],
        settings,
        version=table.get("version"),
        owner=table.get("owner", ""),
    )
    return QueryTable(name=table["name"], path=str(path), format=table["format"])


def _run_confined(
    sql: str, files: list[QueryTable], settings: Settings
) -> Generator[tuple[str, Any], None, None]:
    limits = QueryLimits(
        max_rows=settings.query_max_rows,
        max_bytes=settings.query_max_result_bytes,
        memory_bytes=settings.query_memory_bytes,
    )
    for kind, value in run_confined(sql, files, limits, settings.sql_sandbox):
        if kind == "denied":
            raise SqlFailed(SANDBOX_DENIED, value[:DETAILS_MAX_CHARS])
        if kind == "error":
            raise value
        yield kind, value
