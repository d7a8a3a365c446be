"""What the model sees: the system prompt, the pruned history, and tool results sized for it."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from typing import Any

from actors.conversation import Entry, ModelTurn, ToolCall, ToolResult, ToolResults, UserText

TOO_LONG_DROP = 10  # messages dropped before the one retry of a too-long prompt
RESULT_MAX_ROWS = 50
RESULT_MAX_CHARS = 20_000
CELL_MAX_CHARS = 300
PROMPT_MAX_COLUMNS = 200
URL_MAX_CHARS = 200

# Stored schemas already use friendly names (actors/formats.py); raw Polars/Arrow names map here.
_TYPES = [
    (re.compile(r"^(u?int\d*|integer)$", re.I), "Integer"),
    (re.compile(r"^float\d*$", re.I), "Float"),
    (re.compile(r"^decimal.*", re.I), "Decimal"),
    (re.compile(r"^(string|str|utf8|large_string|large_utf8|text)$", re.I), "Text"),
    (re.compile(r"^(categorical|enum).*", re.I), "Categorical"),
    (re.compile(r"^bool(ean)?$", re.I), "Boolean"),
    (re.compile(r"^date(32|64)?$", re.I), "Date"),
    (re.compile(r"^(datetime|timestamp).*", re.I), "Datetime"),
    (re.compile(r"^time.*", re.I), "Time"),
    (re.compile(r"^duration.*", re.I), "Duration"),
    (re.compile(r"^(list|array|large_list).*", re.I), "List"),
    (re.compile(r"^struct.*", re.I), "Struct"),
    (re.compile(r"^(binary|large_binary)$", re.I), "Binary"),
    (re.compile(r"^null$", re.I), "Null"),
]

INSTRUCTIONS = """\
You are chatdf, a careful data analyst. The user chats with tabular datasets loaded into this \
conversation; you answer by querying them with the execute_sql tool.

How to work:
- SQL dialect: Polars SQL (close to PostgreSQL). Write one read-only SELECT (WITH ... SELECT \
allowed) per execute_sql call.
- Use the table names exactly as listed. Double-quote column names that have spaces, capitals \
or other special characters.
- Add a LIMIT (e.g. LIMIT 50) unless you truly need every row; aggregate in SQL instead of \
fetching raw rows. Results show at most the first {max_rows} rows plus the total row count.
- When unsure about a column's values or the data's shape, explore first (SELECT DISTINCT ..., \
COUNT(*), a few sample rows) before answering.
- If a query fails, read the error, fix the SQL and try again.
- When the user pastes an http(s) link to a dataset (CSV, Parquet, JSON...), call load_dataset \
with that URL, then query the new table.
- Base every number on query results; never invent data. Answer concisely in Markdown.
- You can make at most {max_tool_calls} tool calls per answer."""

NO_DATA = (
    "No datasets are loaded in this conversation yet. If the user asks about data, say that no "
    "data is loaded and ask them to add a dataset or paste a link to one (which you can load "
    "with load_dataset)."
)


# System prompt -------------------------------------------------------------------------------


def friendly_type(dtype: str) -> str:
    """A Polars/Arrow dtype name in words the model and people read easily."""
    for pattern, name in _TYPES:
        if pattern.match(dtype.strip()):
            return name
    return dtype


def describe_dataset(dataset: dict[str, Any]) -> str:
    name = dataset.get("name", "?")
    status = dataset.get("status", "ready")
    url = str(dataset.get("url") or "")[:URL_MAX_CHARS]
    if status == "loading":
        return f"- {name}: still loading from {url} (not queryable yet)"
    if status != "ready":
        return f"- {name}: failed to load from {url} (not queryable)"
    rows = dataset.get("row_count")
    size = f"{rows:,} rows" if isinstance(rows, int) else "row count unknown"
    schema = dataset.get("schema") or []
    columns = ", ".join(
        f"{c.get('name')} ({friendly_type(str(c.get('type', '')))})"
        for c in schema[:PROMPT_MAX_COLUMNS]
    )
    if len(schema) > PROMPT_MAX_COLUMNS:
        columns += f", ... and {len(schema) - PROMPT_MAX_COLUMNS} more columns"
    return f"- {name} ({size}, from {url})\n  columns: {columns or 'unknown'}"


def build_system_prompt(
    datasets: Sequence[dict[str, Any]], *, max_tool_calls: int, max_rows: int = RESULT_MAX_ROWS
) -> str:
    """The per-turn system prompt: instructions plus every dataset of the conversation."""
    head = INSTRUCTIONS.format(max_tool_calls=max_tool_calls, max_rows=max_rows)
    ready = [d for d in datasets if d.get("status", "ready") == "ready"]
    listed = "\n".join(describe_dataset(d) for d in datasets)
    if not ready:
        return f"{head}\n\n{NO_DATA}" + (f"\n\nDatasets:\n{listed}" if listed else "")
    return f"{head}\n\nTables you can query:\n{listed}"


# History -------------------------------------------------------------------------------------


def message_chars(message: dict[str, Any]) -> int:
    """A message's size in characters, its tool rounds included."""
    rounds = message.get("tool_rounds") or []
    return len(message.get("content") or "") + (len(json.dumps(rounds)) if rounds else 0)


def select_history(
    history: Sequence[dict[str, Any]],
    *,
    max_messages: int,
    max_chars: int,
    reserve_chars: int = 0,
) -> list[dict[str, Any]]:
    """The last `max_messages` user/assistant messages, then oldest dropped to fit `max_chars`.

    `reserve_chars` is room kept for what is sent besides history (the new user message).
    A history never starts with an assistant message (its question was dropped).
    """
    kept = [m for m in history if m.get("role") in ("user", "assistant")]
    kept = kept[-max_messages:] if max_messages > 0 else []
    total = reserve_chars + sum(message_chars(m) for m in kept)
    start = 0
    while start < len(kept) and total > max_chars:
        total -= message_chars(kept[start])
        start += 1
    return _from_user(kept[start:])


def drop_oldest(
    history: Sequence[dict[str, Any]], count: int = TOO_LONG_DROP
) -> list[dict[str, Any]]:
    """History without its `count` oldest messages (the retry after a too-long prompt)."""
    return _from_user(list(history[count:]))


def _from_user(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    start = 0
    while start < len(history) and history[start].get("role") != "user":
        start += 1
    return history[start:]


def render_history(history: Sequence[dict[str, Any]]) -> list[Entry]:
    """Messages as the model's conversation; an assistant's tool rounds replay as calls and
    their results (each provider renders these in its own format)."""
    entries: list[Entry] = []
    for message in history:
        text = message.get("content") or ""
        if message.get("role") == "user":
            if text:
                entries.append(UserText(text))
            continue
        for round_ in message.get("tool_rounds") or []:
            call = stored_call(round_)
            entries.append(ModelTurn(calls=(call,)))
            entries.append(ToolResults((ToolResult(call, round_.get("result") or {}),)))
        if text:
            entries.append(ModelTurn(text=text))
    return entries


# Tool rounds ---------------------------------------------------------------------------------


def tool_round(
    name: str, args: dict[str, Any], result: dict[str, Any], signature: bytes | None = None
) -> dict[str, Any]:
    """One stored tool round `{name, args, result}`; `signature` (base64) when the model sent
    one (Gemini's thought signature)."""
    round_: dict[str, Any] = {"name": name, "args": args, "result": result}
    if signature:
        round_["signature"] = base64.b64encode(signature).decode()
    return round_


def stored_call(round_: dict[str, Any]) -> ToolCall:
    """The call of a stored tool round, its signature decoded."""
    signature = round_.get("signature")
    return ToolCall(
        name=round_["name"],
        args=round_.get("args") or {},
        signature=base64.b64decode(signature) if signature else None,
    )


def result_for_model(result: dict[str, Any], max_rows: int = RESULT_MAX_ROWS) -> dict[str, Any]:
    """A SQL result cut to the first rows and a character budget, with counts kept honest."""
    rows = list(result.get("rows") or [])
    total = result.get("total_rows")
    total = total if isinstance(total, int) else len(rows)
    shown = min(len(rows), max_rows)
    while True:
        out: dict[str, Any] = {
            "columns": result.get("columns", []),
            "rows": [_jsonable_row(r) for r in rows[:shown]],
            "rows_shown": shown,
            "total_rows": total,
            "truncated": bool(result.get("truncated")) or shown < len(rows),
        }
        if shown < total:
            out["note"] = f"Only the first {shown} of {total} rows are shown."
        if shown == 0 or len(json.dumps(out, default=str)) <= RESULT_MAX_CHARS:
            return out
        shown //= 2


def _jsonable_row(row: Any) -> Any:
    if isinstance(row, dict):
        return {str(k): _jsonable_cell(v) for k, v in row.items()}
    if isinstance(row, list | tuple):
        return [_jsonable_cell(v) for v in row]
    return _jsonable_cell(row)


def _jsonable_cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= CELL_MAX_CHARS else text[:CELL_MAX_CHARS] + "…"


def dataset_for_model(dataset: dict[str, Any]) -> dict[str, Any]:
    """What load_dataset tells the model about the table it just loaded."""
    return {
        "table_name": dataset.get("name"),
        "row_count": dataset.get("row_count"),
        "columns": [
            {"name": c.get("name"), "type": friendly_type(str(c.get("type", "")))}
            for c in (dataset.get("schema") or [])[:PROMPT_MAX_COLUMNS]
        ],
    }
