"""SQL execution with Polars: a checked query on a conversation's tables, inside a Ray worker."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Literal

import polars as pl

from chatdf.errors import DETAILS_MAX_CHARS, SqlFailed

# Bounded memory for scans and joins; Polars falls back to in-memory where it must.
ENGINE: Literal["streaming"] = "streaming"
MAX_COLUMNS_LISTED = 40  # per table, in "column does not exist" sentences
_MISSING_COLUMN = re.compile(r'unable to find column "([^"]+)"')
_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)"\?')
_PLAN_DUMP = re.compile(r"\n\s*(Resolved plan until failure|This error occurred in)")


# The pure core: frames in, JSON-safe result out -------------------------------------------


def execute_sql(sql: str, frames: Mapping[str, pl.LazyFrame], max_rows: int) -> dict[str, Any]:
    """Run `sql` (already checked) on `frames`: at most `max_rows` rows, the exact total count.

    Returns {columns, rows, total_rows, truncated, execution_ms}; raises SqlFailed.
    """
    query = plan_sql(sql, frames)
    result = collect_head(query, frames, max_rows)
    if result["truncated"]:
        result["total_rows"] = count_rows(query, frames)
    return result


def plan_sql(sql: str, frames: Mapping[str, pl.LazyFrame]) -> pl.LazyFrame:
    """The query as a LazyFrame, in a fresh context that holds only `frames`."""
    context: pl.SQLContext[pl.LazyFrame] = pl.SQLContext(frames=dict(frames), eager=False)
    try:
        return context.execute(sql)
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
        raise explain_polars_error(exc, frames) from None


def collect_head(
    query: pl.LazyFrame, frames: Mapping[str, pl.LazyFrame], max_rows: int
) -> dict[str, Any]:
    """The first `max_rows` rows; one extra row is fetched only to learn whether more exist.

    total_rows is exact when not truncated and None when truncated (see count_rows).
    """
    started = time.perf_counter()
    try:
        frame = query.head(max_rows + 1).collect(engine=ENGINE)
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
        raise explain_polars_error(exc, frames) from None
    except MemoryError:
        raise SqlFailed("The query needed more memory than allowed") from None
    elapsed_ms = (time.perf_counter() - started) * 1000
    truncated = frame.height > max_rows
    frame = frame.head(max_rows)
    return {
        "columns": frame.columns,
        "rows": json_rows(frame),
        "total_rows": None if truncated else frame.height,
        "truncated": truncated,
        "execution_ms": round(elapsed_ms, 3),
    }


def cap_result_bytes(result: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """Keep the leading rows whose JSON fits in `max_bytes`; the rest are truncated as past
    QUERY_MAX_ROWS are. A single row larger than that is refused: there is nothing to show."""
    used = 0
    for index, row in enumerate(result["rows"]):
        used += len(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode())
        if used <= max_bytes:
            continue
        if index == 0:
            raise SqlFailed(
                f"The result is too large: one row alone is over {max_bytes:,} bytes; "
                "select fewer or shorter columns (for example with left(column, 100))",
                f"limit {max_bytes:,} bytes (QUERY_MAX_RESULT_BYTES)",
            )
        return {**result, "rows": result["rows"][:index], "truncated": True, "total_rows": None}
    return result


def count_rows(query: pl.LazyFrame, frames: Mapping[str, pl.LazyFrame]) -> int:
    """How many rows the whole query produces (a second, full pass over the data)."""
    try:
        return int(query.select(pl.len()).collect(engine=ENGINE).item())
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
        raise explain_polars_error(exc, frames) from None


def json_rows(frame: pl.DataFrame) -> list[list[Any]]:
    """Rows as lists of JSON-safe values (see docs/sql.md for the mapping of each type)."""
    columns = [[json_value(v) for v in frame.get_column(name).to_list()] for name in frame.columns]
    return [list(row) for row in zip(*columns, strict=True)] if columns else []


def json_value(value: Any) -> Any:
    """One cell as a JSON-safe value: ISO text for times, str for decimals, base64 for bytes."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON has no NaN/Infinity
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)


def explain_polars_error(exc: BaseException, frames: Mapping[str, pl.LazyFrame]) -> SqlFailed:
    """A Polars error as a sentence a person (or the model) can act on; Polars' text in details."""
    text = _PLAN_DUMP.split(str(exc), maxsplit=1)[0].strip()  # the plan dump helps no one
    details = text[:DETAILS_MAX_CHARS]
    first = text.splitlines()[0][:300] if text else type(exc).__name__
    errors = pl.exceptions
    if isinstance(exc, errors.ColumnNotFoundError):
        found = _MISSING_COLUMN.search(text)
        subject = f"Column '{found.group(1)}'" if found else "A column used in the query"
        hint = _DID_YOU_MEAN.search(text)
        suggestion = f" Did you mean '{hint.group(1)}'?" if hint else ""
        return SqlFailed(
            f"{subject} does not exist. Available columns: {describe_columns(frames)}.{suggestion}",
            details,
        )
    if isinstance(exc, errors.DuplicateError):
        return SqlFailed(
            "The query returns two columns with the same name; give them distinct names with AS",
            details,
        )
    if isinstance(exc, errors.SQLSyntaxError) or first.startswith("sql parser error"):
        return SqlFailed(f"The SQL has a syntax error: {first}", details)
    if isinstance(exc, errors.SQLInterfaceError):
        return SqlFailed(f"The query engine does not support this SQL: {first}", details)
    if isinstance(exc, errors.InvalidOperationError | errors.SchemaError):
        return SqlFailed(f"The query uses a value of the wrong type: {first}", details)
    if isinstance(exc, errors.PanicException):
        return SqlFailed(
            "The query engine failed on this query; try writing it another way", details
        )
    return SqlFailed(f"The query failed: {first}", details)


def describe_columns(frames: Mapping[str, pl.LazyFrame]) -> str:
    """`table1(a, b), table2(c)` for the tables the query reads."""
    parts = []
    for name, frame in sorted(frames.items()):
        try:
            columns = frame.collect_schema().names()
        except (pl.exceptions.PolarsError, OSError):
            continue
        shown = ", ".join(columns[:MAX_COLUMNS_LISTED])
        extra = len(columns) - MAX_COLUMNS_LISTED
        more = f", … ({extra} more)" if extra > 0 else ""
        parts.append(f"{name}({shown}{more})")
    return ", ".join(parts) or "none"
