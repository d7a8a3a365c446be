"""Generated SQL against the guard: whatever it accepts, Polars reads only the given tables.

Fragments that have broken SQL sandboxes before (prefixed strings, backslashes, comment
markers, CR, CTEs named like table functions) are glued together at random; for each text
the guard accepts, Polars' own parser must name only the conversation's tables or CTEs, and
running the text in Polars (unconfined, on purpose) must not touch a loopback tripwire server
that every table function in the corpus points at.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.sql_guard import check_sql
from chatdf.errors import SqlRefused
from tests.fakes.tripwire import Tripwire

FRAGMENTS = [
    "SELECT",
    "*",
    "1",
    "a",
    "region",
    "FROM",
    "table1",
    "WHERE",
    "=",
    ",",
    "(",
    ")",
    "AS",
    "UNION ALL",
    "WITH",
    "read_csv",
    "read_csv AS (SELECT 1 AS a)",
    "read_csv('{url}')",
    "SELECT * FROM read_csv('{url}')",
    "'",
    "''",
    "\\",
    "\\'",
    "x'",
    "X'\\'",
    "e'",
    "E'\\'",
    "N'",
    "U&'",
    "$$",
    "$t$",
    "--",
    "/*",
    "*/",
    "\r",
    "\n",
    '"',
    '""',
    "`",
    "#",
    ";",
    "OR",
    "scan_parquet('{url}')",
    "read_parquet",
    "JOIN",
    "ON true",
    "'a'",
]
PREFIXES = ["", "SELECT * FROM table1 WHERE region = ", "WITH c AS (SELECT 1 AS a) SELECT "]


@pytest.fixture(scope="module")
def tripwire() -> Iterator[Tripwire]:
    with Tripwire.running() as wire:
        yield wire


sql_texts = st.tuples(
    st.sampled_from(PREFIXES),
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=20),
    st.lists(st.sampled_from(["", " "]), min_size=20, max_size=20),
).map(lambda p: p[0] + "".join(f + s for f, s in zip(p[1], p[2], strict=False)))


@settings(
    max_examples=600,
    deadline=None,
    derandomize=True,  # the same corpus every run: CI stays reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(template=sql_texts)
def test_accepted_sql_reads_only_the_conversations_tables(
    template: str, tripwire: Tripwire
) -> None:
    from polars._plr import PySQLContext

    sql = template.replace("{url}", tripwire.url)
    try:
        used = check_sql(sql, ["table1"], 20_000)
    except SqlRefused:
        return
    assert set(used) <= {"table1"}
    names = PySQLContext.table_identifiers(sql, include_schema=True, unique=True)
    assert all(not n.lower().startswith(("read_", "scan_")) for n in names), sql
    before = tripwire.hits
    context = pl.SQLContext(table1=pl.LazyFrame({"region": ["n"], "a": [1]}), eager=False)
    with contextlib.suppress(Exception):  # an engine error is fine; a fetch is not
        context.execute(sql).collect()
    assert tripwire.hits == before, f"the guard let a fetch through: {sql!r}"
