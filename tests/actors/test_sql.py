"""SQL execution: result shape, limits, error sentences, and the Ray task with its time limit."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import ray

from actors.sql import execute_sql
from actors.sql_child import PROCESS_NAME
from actors.tasks import run_sql
from chatdf.errors import DatasetError, SqlFailed, SqlRefused
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.live import wait_until

SALES = pl.DataFrame(
    {
        "region": ["north", "south", "north", "east"],
        "revenue": [10.0, 20.5, 30.0, 5.25],
        "month": ["2024-01", "2024-01", "2024-02", "2024-02"],
    }
)
REGIONS = pl.DataFrame({"region": ["north", "south"], "manager": ["Ann", "Bo"]})


def frames(**extra: pl.DataFrame) -> dict[str, pl.LazyFrame]:
    tables = {"table1": SALES, "table2": REGIONS, **extra}
    return {name: frame.lazy() for name, frame in tables.items()}


# The pure core ----------------------------------------------------------------------------


def test_result_shape() -> None:
    sql = "SELECT region, sum(revenue) AS total FROM table1 GROUP BY region ORDER BY total DESC"
    result = execute_sql(sql, frames(), max_rows=1000)
    assert result["columns"] == ["region", "total"]
    assert result["rows"] == [["north", 40.0], ["south", 20.5], ["east", 5.25]]
    assert result["total_rows"] == 3
    assert result["truncated"] is False
    assert result["execution_ms"] >= 0


def test_join_cte_window_and_union_run() -> None:
    sql = """
        WITH ranked AS (
            SELECT region, revenue,
                row_number() OVER (PARTITION BY region ORDER BY revenue DESC) AS r
            FROM table1
        )
        SELECT t.region, t.revenue, m.manager FROM ranked t JOIN table2 m ON t.region = m.region
        WHERE r = 1
        UNION ALL SELECT 'none', 0.0, 'nobody'
        ORDER BY region
    """
    result = execute_sql(sql, frames(), max_rows=10)
    assert result["rows"] == [
        ["none", 0.0, "nobody"],
        ["north", 30.0, "Ann"],
        ["south", 20.5, "Bo"],
    ]


def test_select_without_from() -> None:
    assert execute_sql("SELECT 1 AS one, 'a' AS txt", {}, 10)["rows"] == [[1, "a"]]


def test_rows_beyond_the_limit_are_truncated_and_counted() -> None:
    big = pl.DataFrame({"n": range(2500)})
    result = execute_sql("SELECT n FROM big ORDER BY n", frames(big=big), max_rows=1000)
    assert len(result["rows"]) == 1000
    assert result["rows"][-1] == [999]
    assert result["truncated"] is True
    assert result["total_rows"] == 2500


def test_exactly_the_limit_is_not_truncated() -> None:
    big = pl.DataFrame({"n": range(1000)})
    result = execute_sql("SELECT n FROM big", frames(big=big), max_rows=1000)
    assert (len(result["rows"]), result["truncated"], result["total_rows"]) == (1000, False, 1000)


def test_empty_result_keeps_columns() -> None:
    result = execute_sql("SELECT region FROM table1 WHERE revenue < 0", frames(), 10)
    assert result == {**result, "columns": ["region"], "rows": [], "total_rows": 0}


def test_values_are_json_safe() -> None:
    odd = pl.DataFrame(
        {
            "d": [dt.date(2024, 2, 29)],
            "ts": [dt.datetime(2024, 1, 2, 3, 4, 5, 6000)],
            "tz": pl.Series([dt.datetime(2024, 1, 1, 12)]).dt.replace_time_zone("UTC"),
            "t": [dt.time(13, 30)],
            "dur": [dt.timedelta(minutes=1, seconds=30)],
            "dec": pl.Series([decimal.Decimal("12345678901234567890.12")], dtype=pl.Decimal(38, 2)),
            "bin": [b"\x00\xffhi"],
            "nan": [float("nan")],
            "inf": [float("inf")],
            "lst": [[1, 2]],
            "st": [{"a": dt.date(2024, 1, 1), "b": None}],
            "cat": pl.Series(["x"], dtype=pl.Categorical),
            "big": pl.Series([2**63 - 1], dtype=pl.Int64),
        }
    )
    result = execute_sql("SELECT * FROM odd", {"odd": odd.lazy()}, 10)
    assert result["rows"] == [
        [
            "2024-02-29",
            "2024-01-02T03:04:05.006000",
            "2024-01-01T12:00:00+00:00",
            "13:30:00",
            90.0,
            "12345678901234567890.12",
            "AP9oaQ==",
            None,
            None,
            [1, 2],
            {"a": "2024-01-01", "b": None},
            "x",
            2**63 - 1,
        ]
    ]
    json.dumps(result, allow_nan=False)  # what a strict JSON response encoder demands


def test_bad_column_names_it_and_lists_the_real_ones() -> None:
    with pytest.raises(SqlFailed) as info:
        execute_sql("SELECT revnue FROM table1", {"table1": SALES.lazy()}, 10)
    assert info.value.error.startswith(
        "Column 'revnue' does not exist. Available columns: table1(region, revenue, month)"
    )
    assert "Did you mean 'revenue'?" in info.value.error
    assert info.value.details is not None and "revnue" in info.value.details


@pytest.mark.parametrize(
    ("sql", "start"),
    [
        ("SELECT region + 1 FROM table1", "The query uses a value of the wrong type"),
        ("SELECT CAST(region AS INT) FROM table1", "The query uses a value of the wrong type"),
        ("SELECT region, region FROM table1", "The query returns two columns with the same name"),
        ("SELECT no_such_fn(region) FROM table1", "The query engine does not support this SQL"),
        ("SELECT * FROM table1 WHERE", "The SQL has a syntax error"),
    ],
)
def test_engine_errors_become_sentences(sql: str, start: str) -> None:
    with pytest.raises(SqlFailed) as info:
        execute_sql(sql, frames(), 10)
    assert info.value.error.startswith(start)
    assert info.value.details
    assert "Resolved plan" not in info.value.details


def test_each_query_sees_only_its_frames() -> None:
    with pytest.raises(SqlFailed):
        execute_sql("SELECT * FROM table2", {"table1": SALES.lazy()}, 10)


def test_local_files_through_scans(tmp_path: Path) -> None:
    SALES.write_parquet(tmp_path / "s.parquet")
    REGIONS.write_csv(tmp_path / "r.csv")
    scans = {
        "table1": pl.scan_parquet(tmp_path / "s.parquet"),
        "table2": pl.scan_csv(tmp_path / "r.csv"),
    }
    sql = "SELECT m.manager, count(*) AS n FROM table1 JOIN table2 m USING (region) GROUP BY 1"
    assert sorted(execute_sql(sql, scans, 10)["rows"]) == [["Ann", 2], ["Bo", 1]]


# The Ray task -----------------------------------------------------------------------------


@pytest.fixture
def served(
    data_server: FakeDataServer, tmp_path: Path
) -> Callable[[str, pl.DataFrame, str], dict[str, Any]]:
    """Writes a frame as a file, serves it on loopback and returns its `tables` item."""

    def serve(name: str, frame: pl.DataFrame, fmt: str = "parquet") -> dict[str, Any]:
        path = tmp_path / f"{name}.{fmt}"
        if fmt == "parquet":
            frame.write_parquet(path)
        else:
            frame.write_csv(path)
        return {"name": name, "url": data_server.add(f"/{name}.{fmt}", path), "format": fmt}

    return serve


def test_a_copy_removed_before_the_query_opens_it_is_fetched_again(
    served: Callable[..., dict[str, Any]],
    data_server: FakeDataServer,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refresh on the same node replaces the cached copy between hand-out and open: the query
    fetches again once instead of failing (stream_sql runs in the task; here, in-process)."""
    from actors import dataset_task
    from actors.sql_task import stream_sql

    tables = [served("table1", SALES)]
    real = dataset_task.ensure_local
    handed: list[Path] = []

    def ensure_then_lose(url: str, fmt: str, given: Settings, **kw: Any) -> Path:
        path = real(url, fmt, given, **kw)
        if not handed:
            path.unlink()  # what inspect_dataset's refresh does to a stale Parquet copy
        handed.append(path)
        return path

    monkeypatch.setattr(dataset_task, "ensure_local", ensure_then_lose)
    items = list(stream_sql("SELECT sum(revenue) AS total FROM table1", tables, settings))
    assert [item["kind"] for item in items] == ["started", "rows"]
    assert items[1]["rows"] == [[65.75]]
    assert len(handed) == 2
    assert data_server.requests["/table1.parquet"] == 2  # downloaded again, once


def test_a_copy_that_keeps_disappearing_is_a_clear_error(
    served: Callable[..., dict[str, Any]], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actors import dataset_task
    from actors.sql_task import stream_sql

    tables = [served("table1", SALES)]
    real = dataset_task.ensure_local

    def always_lose(url: str, fmt: str, given: Settings, **kw: Any) -> Path:
        path = real(url, fmt, given, **kw)
        path.unlink()
        return path

    monkeypatch.setattr(dataset_task, "ensure_local", always_lose)
    items = list(stream_sql("SELECT * FROM table1", tables, settings))
    assert [item["kind"] for item in items] == ["started", "error"]
    assert isinstance(items[1]["exception"], SqlFailed)
    assert "disappeared" in items[1]["exception"].error


@pytest.mark.usefixtures("ray_session")
async def test_run_sql_end_to_end(
    served: Callable[..., dict[str, Any]], settings: Settings
) -> None:
    tables = [served("table1", SALES), served("table2", REGIONS, "csv")]
    sql = (
        "SELECT manager, sum(revenue) AS total FROM table1 JOIN table2 USING (region)"
        " GROUP BY 1 ORDER BY 1"
    )
    result = await run_sql(sql, tables, settings)
    assert result["columns"] == ["manager", "total"]
    assert result["rows"] == [["Ann", 40.0], ["Bo", 20.5]]
    assert (result["total_rows"], result["truncated"]) == (2, False)


@pytest.mark.usefixtures("ray_session")
async def test_run_sql_reads_only_the_tables_it_names(
    served: Callable[..., dict[str, Any]], data_server: FakeDataServer, settings: Settings
) -> None:
    tables = [served("table1", SALES), served("table2", REGIONS)]
    await run_sql("SELECT count(*) AS n FROM table1", tables, settings)
    assert data_server.requests["/table2.parquet"] == 0


@pytest.mark.usefixtures("ray_session")
async def test_run_sql_truncates_and_counts(
    served: Callable[..., dict[str, Any]], settings: Settings
) -> None:
    tables = [served("table1", pl.DataFrame({"n": range(2500)}))]
    result = await run_sql("SELECT n FROM table1", tables, settings)
    assert (len(result["rows"]), result["truncated"], result["total_rows"]) == (1000, True, 2500)


@pytest.mark.usefixtures("ray_session")
async def test_run_sql_refuses_before_any_io(
    served: Callable[..., dict[str, Any]], data_server: FakeDataServer, settings: Settings
) -> None:
    tables = [served("table1", SALES)]
    secret = data_server.add("/secret.csv", b"password\nhunter2\n")
    for sql in [f"SELECT * FROM read_csv('{secret}')", "SELECT * FROM table9", "DROP TABLE table1"]:
        with pytest.raises(SqlRefused):
            await run_sql(sql, tables, settings)
    assert sum(data_server.requests.values()) == 0


@pytest.mark.usefixtures("ray_session")
async def test_run_sql_cross_checks_in_the_task_before_any_io(
    served: Callable[..., dict[str, Any]], data_server: FakeDataServer, settings: Settings
) -> None:
    """The task runs Polars' parser (after sqlglot's checks) before fetching anything."""
    tables = [served("table1", SALES)]
    with pytest.raises(SqlRefused, match="The query engine could not parse the SQL"):
        await run_sql("SELECT * FROM table1 USING SAMPLE 10", tables, settings)
    assert sum(data_server.requests.values()) == 0


@pytest.mark.usefixtures("ray_session")
async def test_run_sql_reports_engine_errors(
    served: Callable[..., dict[str, Any]], settings: Settings
) -> None:
    with pytest.raises(SqlFailed, match="Column 'revnue' does not exist"):
        await run_sql("SELECT revnue FROM table1", [served("table1", SALES)], settings)


@pytest.mark.usefixtures("ray_session")
async def test_run_sql_passes_dataset_errors_on(
    data_server: FakeDataServer, settings: Settings
) -> None:
    gone = {
        "name": "table1",
        "url": data_server.add("/gone.parquet", status=404),
        "format": "parquet",
    }
    with pytest.raises(DatasetError):
        await run_sql("SELECT * FROM table1", [gone], settings)


# Time limits: force-cancel must really stop Polars ----------------------------------------

SLOW_SQL = "SELECT sum(a.n * b.n + c.n) AS s FROM table1 a, table1 b, table1 c"  # 8e12 rows


def sql_workers_running() -> int:
    """Ray names a worker's process after its task: count ours (descendants of this test run)."""
    parents: dict[int, int] = {}
    titles: dict[int, bytes] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            titles[int(proc.name)] = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    me = os.getpid()

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return sum(
        1 for pid, title in titles.items() if title.startswith(b"ray::sql_task") and ours(pid)
    )


def query_processes_running() -> int:
    """Confined query processes (actors.sql_child names them), wherever they were reparented."""
    count = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            count += comm.read_bytes().strip() == PROCESS_NAME
        except OSError:
            continue
    return count


@pytest.mark.usefixtures("ray_session")
async def test_time_limit_force_cancels_a_running_query(
    served: Callable[..., dict[str, Any]], settings: Settings
) -> None:
    tables = [served("table1", pl.DataFrame({"n": range(20_000)}))]
    settings.query_timeout_s = 3
    cpus_before = ray.available_resources().get("CPU", 0)  # type: ignore[no-untyped-call]
    runner = asyncio.ensure_future(run_sql(SLOW_SQL, tables, settings))
    # The query is seen running inside a worker, so the cancel below stops real work.
    assert await asyncio.to_thread(wait_until, lambda: sql_workers_running() == 1)
    assert await asyncio.to_thread(wait_until, lambda: query_processes_running() == 1)
    with pytest.raises(SqlFailed) as info:
        await runner
    assert info.value.error == "The query took longer than 3 seconds and was cancelled"
    assert wait_until(lambda: sql_workers_running() == 0)
    assert wait_until(lambda: query_processes_running() == 0)  # the confined process too
    assert wait_until(lambda: ray.available_resources().get("CPU", 0) >= cpus_before)  # type: ignore[no-untyped-call]


@pytest.mark.usefixtures("ray_session")
async def test_stopping_the_caller_cancels_the_query(
    served: Callable[..., dict[str, Any]], settings: Settings
) -> None:
    tables = [served("table1", pl.DataFrame({"n": range(20_000)}))]
    runner = asyncio.ensure_future(run_sql(SLOW_SQL, tables, settings))
    assert await asyncio.to_thread(wait_until, lambda: sql_workers_running() == 1)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert wait_until(lambda: sql_workers_running() == 0)
    assert wait_until(lambda: query_processes_running() == 0)


def sql_worker_pids() -> list[int]:
    return [
        int(p.parent.name)
        for p in Path("/proc").glob("[0-9]*/cmdline")
        if p.exists() and p.read_bytes().startswith(b"ray::sql_task")
    ]


@pytest.mark.usefixtures("ray_session")
async def test_a_crashed_worker_is_a_sentence_without_internals(
    served: Callable[..., dict[str, Any]], settings: Settings
) -> None:
    """Ray's text (traceback, file paths, pid, node address) never reaches the client."""
    tables = [served("table1", pl.DataFrame({"n": range(20_000)}))]
    runner = asyncio.ensure_future(run_sql(SLOW_SQL, tables, settings))
    assert await asyncio.to_thread(wait_until, lambda: sql_workers_running() == 1)
    for pid in sql_worker_pids():
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(SqlFailed) as info:
        await runner
    assert info.value.error == "The query engine stopped unexpectedly"
    assert info.value.details is None
    assert wait_until(lambda: query_processes_running() == 0)


@pytest.mark.usefixtures("ray_session")
async def test_slow_count_leaves_total_unknown(
    served: Callable[..., dict[str, Any]], settings: Settings
) -> None:
    """The first rows of a huge cross join come fast; its full count would not, so it is dropped."""
    tables = [served("table1", pl.DataFrame({"n": range(20_000)}))]
    settings.query_timeout_s = 4
    result = await run_sql(
        "SELECT a.n, b.n AS m, c.n AS k FROM table1 a, table1 b, table1 c", tables, settings
    )
    assert (len(result["rows"]), result["truncated"], result["total_rows"]) == (1000, True, None)
    assert wait_until(lambda: sql_workers_running() == 0)


# Slots: per node and per user; waiting never eats the time limit --------------------------


@pytest.mark.usefixtures("ray_session")
async def test_a_query_takes_a_node_slot_not_a_cpu(
    served: Callable[..., dict[str, Any]], settings: Settings
) -> None:
    from actors.tasks import QUERY_SLOT

    tables = [served("table1", pl.DataFrame({"n": range(20_000)}))]
    slots = ray.cluster_resources()[QUERY_SLOT]  # type: ignore[no-untyped-call]
    cpus = ray.available_resources().get("CPU", 0)  # type: ignore[no-untyped-call]
    runner = asyncio.ensure_future(run_sql(SLOW_SQL, tables, settings))
    assert await asyncio.to_thread(wait_until, lambda: sql_workers_running() == 1)

    def available() -> dict[str, float]:
        resources: dict[str, float] = ray.available_resources()  # type: ignore[no-untyped-call]
        return resources

    # The driver's view of resources follows the raylet's by a report interval: wait for it.
    assert await asyncio.to_thread(wait_until, lambda: available().get(QUERY_SLOT, 0) == slots - 1)
    assert available().get("CPU", 0) == cpus  # no CPU reserved: Polars' threads share the cores
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert wait_until(lambda: query_processes_running() == 0)


@pytest.mark.usefixtures("ray_session")
async def test_one_users_queries_take_turns_and_waiting_does_not_eat_the_limit(
    served: Callable[..., dict[str, Any]], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QUERY_MAX_CONCURRENT_PER_USER=1: the second query waits for the first (cancelled at its
    3 s limit) and then gets its own full limit: it succeeds after more than 3 s in total."""
    from actors import tasks

    monkeypatch.setattr(tasks, "_user_queries", None)
    settings.query_max_concurrent_per_user = 1
    settings.query_timeout_s = 3
    tables = [served("table1", pl.DataFrame({"n": range(20_000)}))]
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow = asyncio.ensure_future(run_sql(SLOW_SQL, tables, settings))
    assert await asyncio.to_thread(wait_until, lambda: sql_workers_running() == 1)
    quick = asyncio.ensure_future(run_sql("SELECT count(*) AS n FROM table1", tables, settings))
    assert tasks._user_queries is not None and tasks._user_queries.locked()
    with pytest.raises(SqlFailed, match="took longer than 3 seconds"):
        await slow
    assert (await quick)["rows"] == [[20_000]]
    assert loop.time() - started > 3


def test_a_refresh_on_one_node_reaches_the_copy_on_another(
    data_server: FakeDataServer, settings: Settings, tmp_path: Path
) -> None:
    """Two nodes' caches (two data dirs), one URL. Node B answers from its copy; the file
    changes and node A refreshes (a new content version in the database): node B's next
    query fetches again instead of answering from its old copy."""
    from actors.dataset_task import inspect_dataset
    from actors.sql_task import stream_sql

    node_a = settings.model_copy(update={"data_dir": str(tmp_path / "node-a")})
    node_b = settings.model_copy(update={"data_dir": str(tmp_path / "node-b")})
    url = data_server.add("/live.csv", b"n\n1\n")
    loaded = inspect_dataset(url, node_a)
    table = {"name": "t", "url": url, "format": "csv", "version": loaded["read_at"]}

    def total(node: Settings, version: float) -> Any:
        items = list(stream_sql("SELECT sum(n) AS s FROM t", [{**table, "version": version}], node))
        return items[1]["rows"][0][0]

    assert total(node_b, loaded["read_at"]) == 1
    assert total(node_b, loaded["read_at"]) == 1  # reused: no second download
    assert data_server.requests["/live.csv"] == 3  # A: first bytes + download; B: download
    data_server.add("/live.csv", b"n\n1\n41\n")
    refreshed = inspect_dataset(url, node_a)  # on node A only
    assert total(node_b, refreshed["read_at"]) == 42
