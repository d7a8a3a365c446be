"""The second wall: a query process reads only its tables, opens no connection, keeps no key.

These tests hand SQL straight to the confined process, skipping the guard on purpose: they
show what one guard bug alone could reach (nothing), not what the guard refuses.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from actors import landlock
from actors.sql_child import QueryLimits, QueryTable, _prepare_process
from actors.sql_sandbox import run_confined
from chatdf.errors import SqlFailed
from tests.fakes.tripwire import Tripwire

pytestmark = pytest.mark.skipif(landlock.abi_version() < 4, reason="needs Landlock ABI 4+")
MiB = 1024**2


@pytest.fixture
def table(tmp_path: Path) -> QueryTable:
    path = tmp_path / "cache" / "table1.parquet"
    path.parent.mkdir()
    pl.DataFrame({"region": ["n", "s"], "revenue": [1.5, 2.0]}).write_parquet(path)
    return QueryTable(name="table1", path=str(path), format="parquet")


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """Another user's cached dataset, beside the query's own file."""
    path = tmp_path / "cache" / "other-user.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("password\nhunter2\n")
    return path


def limits(memory: int = 512 * MiB, max_bytes: int = MiB) -> QueryLimits:
    return QueryLimits(max_rows=100, max_bytes=max_bytes, memory_bytes=memory)


def items(sql: str, tables: list[QueryTable], memory: int = 512 * MiB) -> list[tuple[str, Any]]:
    return list(run_confined(sql, tables, limits(memory), "required"))


def test_the_query_reads_its_own_table(table: QueryTable) -> None:
    got = items("SELECT region, revenue FROM table1 ORDER BY region", [table])
    assert got[0][0] == "rows"
    assert got[0][1]["rows"] == [["n", 1.5], ["s", 2.0]]


@pytest.mark.parametrize("target", ["/etc/passwd", "secret"])
def test_a_file_outside_the_query_cannot_be_read(
    target: str, table: QueryTable, secret: Path
) -> None:
    path = str(secret) if target == "secret" else target
    got = items(f"SELECT * FROM read_csv('{path}')", [table])
    assert got[0][0] == "denied"
    assert "hunter2" not in repr(got) and "root:" not in repr(got)


def test_the_data_directory_database_cannot_be_read(table: QueryTable, tmp_path: Path) -> None:
    db = tmp_path / "chatdf.db"
    db.write_text("users: someone@example.com\n")
    got = items(f"SELECT * FROM read_csv('{db}')", [table])
    assert got[0][0] == "denied"


def test_no_network_connection_is_opened(table: QueryTable) -> None:
    with Tripwire.running() as wire:
        got = items(f"SELECT * FROM read_csv('{wire.url}')", [table])
        assert got[0][0] == "error"
        assert wire.hits == 0
        # The same query unconfined does reach the server: the counter would have seen it.
        list(run_confined(f"SELECT * FROM read_csv('{wire.url}')", [table], limits(), "off"))
        assert wire.hits > 0


def test_memory_is_limited_for_real(table: QueryTable) -> None:
    # A hash set of 36M distinct values (~600 MB): stopped at 64 MiB instead of growing.
    sql = (
        "SELECT count(DISTINCT p) AS n FROM (SELECT a * 6000 + b AS p"
        " FROM (SELECT unnest(range(0, 6000)) AS a) x"
        " CROSS JOIN (SELECT unnest(range(0, 6000)) AS b) y) z"
    )
    with pytest.raises(SqlFailed, match="more memory than allowed") as info:
        items(sql, [table], memory=64 * MiB)
    assert "QUERY_MEMORY_BYTES" in (info.value.details or "")


def _environment_after_preparing(conn: Any) -> None:
    _prepare_process([], limits(memory=256 * MiB))
    proc_environ = "readable"
    try:
        Path(f"/proc/{os.getppid()}/environ").read_bytes()
    except PermissionError:
        proc_environ = "denied"
    conn.send((dict(os.environ), proc_environ))


def test_the_query_process_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "sk-secret-key")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@db/chatdf")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-cluster-token")
    context = multiprocessing.get_context("forkserver")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_environment_after_preparing, args=(sender,))
    process.start()
    environment, proc_environ = receiver.recv()
    process.join()
    assert "GEMINI_API_KEY" not in environment and "DATABASE_URL" not in environment
    assert "RAY_AUTH_TOKEN" not in environment
    assert proc_environ == "denied"  # nor another process's environment through /proc


def test_result_bytes_are_capped(table: QueryTable) -> None:
    """Rows past QUERY_MAX_RESULT_BYTES are truncated; one row over it alone is refused."""
    wide = "SELECT region, concat_ws('', region, region, region, region) AS s FROM table1"
    got = list(run_confined(wide, [table], limits(max_bytes=16), "required"))
    assert got[0][0] == "rows"
    assert got[0][1]["rows"] == [["n", "nnnn"]] and got[0][1]["truncated"] is True
    assert got[1] == ("count", 2)
    got = list(run_confined(wide, [table], limits(max_bytes=8), "required"))
    assert got[0][0] == "error"
    assert got[0][1].error.startswith("The result is too large: one row alone is over 8 bytes")


MAIN_SCRIPT = """
import os, sys
if __name__ == "__mp_main__":  # multiprocessing re-running this script in the query process
    with open(os.environ["MARK"], "a") as mark:
        mark.write("re-imported\\n")
if __name__ == "__main__":
    sys.path.insert(0, os.environ["ROOT"])
    from actors.sql_child import QueryLimits, QueryTable
    from actors.sql_sandbox import run_confined
    table = QueryTable(name="table1", path=os.environ["TABLE"], format="parquet")
    limits = QueryLimits(max_rows=10, max_bytes=10_000, memory_bytes=512 * 1024**2)
    print(list(run_confined("SELECT SUM(revenue) AS total FROM table1", [table], limits, "off")))
"""


def test_a_query_process_does_not_rerun_the_parents_main_script(
    table: QueryTable, tmp_path: Path
) -> None:
    """In a Ray worker the main script is Ray's worker script: re-running it in every query
    process (multiprocessing's default) imported Ray there, ≈ 0.3 s per query."""
    import subprocess
    import sys

    script = tmp_path / "parent_main.py"
    script.write_text(MAIN_SCRIPT)
    mark = tmp_path / "mark"
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "MARK": str(mark), "TABLE": table.path, "ROOT": root}
    run = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "'rows': [[3.5]]" in run.stdout, run.stdout
    assert not mark.exists(), mark.read_text()
