"""The SQL sandbox: escapes are refused before any I/O, ordinary analytics queries pass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from actors.sql_guard import check_sql
from chatdf.errors import SqlRefused
from tests.fakes.tripwire import Tripwire

TABLES = ["table1", "table2"]
MAX_CHARS = 20_000

TABLE_FUNCTION_ESCAPES = [
    "SELECT * FROM read_csv('{p}')",
    "SELECT * FROM table1 JOIN read_csv('{p}') AS x ON true",
    "SELECT * FROM table1, read_csv('{p}')",
    "WITH x AS (SELECT * FROM read_csv('{p}')) SELECT * FROM x",
    "SELECT * FROM (SELECT * FROM read_csv('{p}')) s",
    "SELECT * FROM table1 WHERE region IN (SELECT * FROM read_csv('{p}'))",
    "SELECT (SELECT count(*) FROM read_csv('{p}')) AS n",
    "SELECT * FROM table1 UNION ALL SELECT * FROM read_csv('{p}')",
    "SELECT * FROM \"read_csv\"('{p}')",
    "SELECT * FROM ReAd_CsV('{p}')",
    "SELECT * FROM read_csv/* hi */(/* there */'{p}')",
    "SELECT * FROM read_csv -- comment\n ('{p}')",
    "SELECT * FROM read_parquet('{p}')",
    "SELECT * FROM read_ipc('{p}')",
    "SELECT * FROM read_json('{p}')",
    "SELECT * FROM read_ndjson('{p}')",
    "SELECT * FROM READ_NDJSON('{p}')",
    "SELECT * FROM read_csv(['{p}', '{p}'])",
    "SELECT * FROM read_csv('http://127.0.0.1:1/x.csv')",
    "SELECT read_csv('{p}')",
    "SELECT * FROM scan_parquet('{p}')",
    "SELECT * FROM generate_series(1, 10)",
    "SELECT * FROM unnest([1, 2]) AS u(x)",
]

STATEMENT_ESCAPES = [
    "COPY table1 TO '{p}'",
    "CREATE TABLE x AS SELECT * FROM table1",
    "CREATE TABLE x AS SELECT * FROM read_csv('{p}')",
    "DROP TABLE table1",
    "DELETE FROM table1",
    "TRUNCATE table1",
    "TRUNCATE TABLE table1",
    "INSERT INTO table1 VALUES (1)",
    "UPDATE table1 SET revenue = 0",
    "SELECT 1; DROP TABLE table1",
    "SELECT 1; SELECT 2",
    "SELECT * INTO x FROM table1",
    "EXPLAIN SELECT * FROM table1",
    "EXPLAIN ANALYZE SELECT * FROM table1",
    "SHOW TABLES",
    "DESCRIBE table1",
    "SET x = 1",
    "PRAGMA threads=1",
    "ATTACH '{p}' AS db",
]


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A local file that must never be read."""
    path = tmp_path / "secret.csv"
    path.write_text("password\nhunter2\n")
    return path


def refusal(sql: str, tables: list[str] = TABLES) -> SqlRefused:
    with pytest.raises(SqlRefused) as info:
        check_sql(sql, tables, MAX_CHARS)
    return info.value


@pytest.mark.parametrize("template", TABLE_FUNCTION_ESCAPES)
def test_table_functions_are_refused(template: str, secret: Path) -> None:
    err = refusal(template.format(p=secret))
    assert "not allowed" in err.error or "Unknown table" in err.error
    assert "hunter2" not in str(err)


@pytest.mark.parametrize("template", TABLE_FUNCTION_ESCAPES[:18])
def test_read_functions_name_table_functions(template: str, secret: Path) -> None:
    assert refusal(template.format(p=secret)).error.startswith("Table functions such as read_csv")


@pytest.mark.parametrize("template", STATEMENT_ESCAPES)
def test_non_select_statements_are_refused(template: str, secret: Path) -> None:
    err = refusal(template.format(p=secret))
    assert err.status == 400
    assert "hunter2" not in str(err)


def test_several_statements_message() -> None:
    err = refusal("SELECT 1; DROP TABLE t")
    assert err.error == "Only a single SELECT query is allowed"
    assert err.details == "found 2 statements"


def test_unknown_table_lists_available_ones() -> None:
    err = refusal("SELECT * FROM other_conversation_table")
    assert err.error == "Unknown table 'other_conversation_table'. Available tables: table1, table2"


def test_unknown_table_with_no_tables() -> None:
    assert "load a dataset first" in refusal("SELECT * FROM t", tables=[]).error


def test_qualified_table_names_are_refused() -> None:
    assert refusal("SELECT * FROM other.table1").error.startswith("Unknown table 'other.table1'")


def test_quoted_path_as_table_name_is_refused(secret: Path) -> None:
    assert refusal(f"SELECT * FROM '{secret}'").error.startswith("Unknown table")
    assert refusal(f'SELECT * FROM "{secret}"').error.startswith("Unknown table")


def test_lateral_is_refused() -> None:
    err = refusal("SELECT * FROM table1, LATERAL (SELECT * FROM table2) x")
    assert "LATERAL" in err.error


def test_cte_is_visible_only_in_its_scope() -> None:
    # `a` is defined inside a subquery; the outer query cannot name it.
    sql = "SELECT * FROM (WITH a AS (SELECT 1 AS x) SELECT * FROM a) s JOIN a ON true"
    assert refusal(sql).error.startswith("Unknown table 'a'")
    # A CTE sees the ones defined before it, not after it.
    assert refusal("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a").error.startswith(
        "Unknown table 'b'"
    )


def test_cte_cannot_hide_a_table_function(secret: Path) -> None:
    sql = f"WITH read_csv AS (SELECT 1) SELECT * FROM read_csv('{secret}')"
    assert refusal(sql).error.startswith("Table functions")


def test_too_long_sql_is_refused() -> None:
    with pytest.raises(SqlRefused, match="too long"):
        check_sql("SELECT 1" + " " * 100, TABLES, max_chars=50)


@pytest.mark.parametrize("sql", ["", "   ", ";", "-- nothing"])
def test_empty_sql_is_refused(sql: str) -> None:
    refusal(sql)


@pytest.mark.parametrize(
    "sql", ["SELEC * FROM table1", "SELECT * FROM table1 WHERE (", "SELECT `a` FROM table1"]
)
def test_unparseable_sql_is_refused(sql: str) -> None:
    refusal(sql)


BOTH = ["table1", "table2"]
GOOD_QUERIES = [
    ("SELECT 1 AS one", []),
    ("SELECT * FROM table1", ["table1"]),
    ("SELECT * FROM TABLE1", ["table1"]),
    ('SELECT * FROM "table1"', ["table1"]),
    ("SELECT region, sum(revenue) AS s FROM table1 GROUP BY region ORDER BY s DESC", ["table1"]),
    ("SELECT t.region, u.x FROM table1 t JOIN table2 u ON t.region = u.region", BOTH),
    ("SELECT region FROM table1 UNION SELECT region FROM table2", ["table1", "table2"]),
    ("SELECT region FROM table1 INTERSECT SELECT region FROM table2", ["table1", "table2"]),
    ("SELECT region FROM table1 EXCEPT SELECT region FROM table2", ["table1", "table2"]),
    ("WITH a AS (SELECT * FROM table1), b AS (SELECT * FROM a) SELECT * FROM b", ["table1"]),
    (
        "SELECT * FROM (SELECT region FROM table1) s WHERE region IN (SELECT region FROM table2)",
        BOTH,
    ),
    (
        "SELECT region, rank() OVER (PARTITION BY region ORDER BY revenue DESC) FROM table1",
        ["table1"],
    ),
    ("SELECT * FROM table1 QUALIFY row_number() OVER (ORDER BY revenue) = 1", ["table1"]),
    ("SELECT * EXCLUDE (month) FROM table1 WHERE region ILIKE 'n%' LIMIT 5", ["table1"]),
    ("SELECT revenue::varchar, revenue // 2 FROM table1", ["table1"]),
    ("SELECT 'read_csv(''/etc/passwd'')' AS harmless_text", []),
    ("(SELECT * FROM table1)", ["table1"]),
]


@pytest.mark.parametrize(("sql", "used"), GOOD_QUERIES)
def test_good_queries_pass_and_report_tables_read(sql: str, used: list[str]) -> None:
    assert check_sql(sql, TABLES, MAX_CHARS) == used


def test_good_queries_also_run_in_polars() -> None:
    """The accepted corpus is real Polars SQL, not only sqlglot-valid text."""
    t1 = pl.LazyFrame({"region": ["n", "s"], "revenue": [1, 2], "month": ["2024-01", "2024-02"]})
    t2 = pl.LazyFrame({"region": ["n"], "x": [3]})
    ctx = pl.SQLContext(table1=t1, table2=t2)
    for sql, _ in GOOD_QUERIES:
        ctx.execute(sql).collect()


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    with Tripwire.running() as wire:
        yield wire


def test_check_does_no_io(tripwire: Tripwire) -> None:
    """Every escape aimed at a loopback URL is refused and the server never sees a request."""
    for template in TABLE_FUNCTION_ESCAPES + STATEMENT_ESCAPES:
        with pytest.raises(SqlRefused):
            check_sql(template.format(p=tripwire.url), TABLES, MAX_CHARS)
    assert tripwire.hits == 0
    # The same text handed straight to Polars does fetch: the counter would have noticed.
    with pytest.raises(OSError):  # this tiny server lacks range requests; the fetch is what counts
        pl.SQLContext().execute(f"SELECT * FROM read_csv('{tripwire.url}')").collect()
    assert tripwire.hits > 0


def test_polars_cross_check_refuses_on_its_own(secret: Path) -> None:
    """The second layer alone catches what Polars would read, whatever sqlglot thought."""
    from actors.sql_guard import _cross_check_with_polars

    with pytest.raises(SqlRefused, match="Table functions"):
        _cross_check_with_polars(f"SELECT * FROM read_csv('{secret}')", {"table1": "table1"}, set())
    with pytest.raises(SqlRefused, match="Unknown table 'elsewhere'"):
        _cross_check_with_polars("SELECT * FROM elsewhere", {"table1": "table1"}, set())
    _cross_check_with_polars(
        "WITH c AS (SELECT 1) SELECT * FROM c, table1", {"table1": "table1"}, {"c"}
    )


def test_without_the_cross_check_every_escape_is_still_refused(secret: Path) -> None:
    """The session actor's early check (sqlglot only: no Polars there) refuses them all."""
    for template in TABLE_FUNCTION_ESCAPES + STATEMENT_ESCAPES:
        with pytest.raises(SqlRefused):
            check_sql(template.format(p=secret), TABLES, MAX_CHARS, cross_check=False)


def test_the_cross_check_is_on_by_default() -> None:
    sql = "SELECT * FROM table1 USING SAMPLE 10"  # sqlglot reads it, Polars' parser does not
    assert check_sql(sql, TABLES, MAX_CHARS, cross_check=False) == ["table1"]
    with pytest.raises(SqlRefused, match="The query engine could not parse the SQL"):
        check_sql(sql, TABLES, MAX_CHARS)


def test_comment_terminators_the_parsers_disagree_on_are_refused(secret: Path) -> None:
    # sqlglot ends a line comment at a bare CR, Polars does not: the text sqlglot sees is refused.
    refusal(f"SELECT 1 -- \r FROM read_csv('{secret}')")
    # A backslash does not escape a quote in either parser, so both see the function call.
    refusal(f"SELECT 'a\\' AS x, * FROM read_csv('{secret}') -- '")


# The two flaws of the live attack (issue 10), and their class ---------------------------


def test_no_cte_name_clears_a_table_function_in_polars_reading(secret: Path) -> None:
    """Polars' own reading names read_csv: a CTE called read_csv must not clear it."""
    from actors.sql_guard import _cross_check_with_polars

    sql = f"WITH read_csv AS (SELECT 1 AS a) SELECT * FROM read_csv('{secret}')"
    with pytest.raises(SqlRefused, match="Table functions"):
        _cross_check_with_polars(sql, {"table1": "table1"}, {"read_csv"})


@pytest.mark.parametrize(
    "sql",
    [
        "WITH read_csv AS (SELECT 1 AS a) SELECT * FROM read_csv",
        "WITH scan_parquet AS (SELECT 1 AS a) SELECT a FROM scan_parquet",
        "SELECT * FROM table1 AS read_csv",
        "SELECT r.* FROM (SELECT 1 AS a) AS read_ipc(a) JOIN table1 ON true",
    ],
)
def test_nothing_may_be_named_like_a_table_function(sql: str) -> None:
    assert refusal(sql).error.startswith("Table functions")


@pytest.mark.parametrize(
    "sql",
    [
        # Polars reads X'..' with backslash escapes, so the string would swallow the comment.
        "SELECT x'\\' AS a, ' AS b FROM read_csv('{p}') --' AS c FROM table1",
        "SELECT * FROM table1 WHERE region = X'\\' UNION ALL SELECT * FROM read_csv('{p}') -- '",
        "SELECT * FROM table1 WHERE region = e'\\' OR read_csv('{p}') -- '",
        "SELECT * FROM table1 WHERE region = N'a'",
        "SELECT * FROM table1 WHERE region = U&'\\0041'",
        "SELECT * FROM table1 WHERE region = $$a$$",
        "SELECT * FROM table1 WHERE region = $tag$a$tag$",
        "SELECT 1 /* a /* nested */ FROM read_csv('{p}') */ AS x",
        "SELECT 1 -- ends here for one parser only\r, * FROM read_csv('{p}')",
        'SELECT "region""" FROM table1 # read_csv(\'{p}\')',
        "SELECT `region` FROM table1",
        "SELECT 1 AS a \\ FROM table1",
    ],
)
def test_constructs_the_parsers_could_read_apart_are_refused(sql: str, secret: Path) -> None:
    err = refusal(sql.format(p=secret))
    assert "hunter2" not in str(err)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'it''s' AS a, \"region\" FROM table1 -- a comment\n WHERE revenue > 1",
        "SELECT /* a comment */ region FROM table1 WHERE region ~ '\\d+' -- trailing",
        "SELECT region AS \"Region name\" FROM table1 WHERE region LIKE 'n%'",
    ],
)
def test_plain_strings_names_and_comments_still_pass(sql: str) -> None:
    assert check_sql(sql, TABLES, MAX_CHARS) == ["table1"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "(" * 2000 + "1" + ")" * 2000,
        "SELECT " + "NOT " * 3000 + "true",
        "SELECT " + "- " * 3000 + "1",
        "SELECT * FROM table1 WHERE " + "(" * 65 + "true" + ")" * 65,
    ],
)
def test_deep_nesting_is_a_refusal_not_a_crash(sql: str) -> None:
    """Both parsers recurse per level: 2,000 parentheses used to raise RecursionError (500)."""
    assert (
        refusal(sql).error
        == "The SQL is nested too deeply (at most 64 levels); write it more simply"
    )


def test_reasonable_nesting_still_passes() -> None:
    sql = "SELECT * FROM table1 WHERE " + "(" * 20 + "NOT NOT revenue > 1" + ")" * 20
    assert check_sql(sql, TABLES, MAX_CHARS) == ["table1"]
