"""The system prompt, history selection and pruning, tool-round replay, and result sizing."""

from __future__ import annotations

import json
from typing import Any

from google.genai import types

from actors.gemini import gemini_contents
from actors.prompt import (
    NO_DATA,
    RESULT_MAX_CHARS,
    build_system_prompt,
    drop_oldest,
    friendly_type,
    render_history,
    result_for_model,
    select_history,
    tool_round,
)

SALES = {
    "id": "d1",
    "name": "sales",
    "url": "http://127.0.0.1:9/sales.csv",
    "status": "ready",
    "row_count": 1234,
    "schema": [{"name": "region", "type": "Text"}, {"name": "amount", "type": "Float64"}],
}


def talk(count: int, size: int = 10) -> list[dict[str, Any]]:
    """`count` alternating user/assistant messages whose content is `size` chars (index first)."""
    return [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"{i:04d}".ljust(size, "x"),
            "tool_rounds": [],
        }
        for i in range(count)
    ]


def test_friendly_types_cover_raw_and_stored_names() -> None:
    assert friendly_type("Int64") == "Integer"
    assert friendly_type("UInt8") == "Integer"
    assert friendly_type("Float64") == "Float"
    assert friendly_type("String") == "Text"
    assert friendly_type("Datetime(time_unit='us', time_zone=None)") == "Datetime"
    assert friendly_type("Date") == "Date"
    assert friendly_type("List(Int64)") == "List"
    assert friendly_type("Text") == "Text"  # already friendly: kept
    assert friendly_type("Weird") == "Weird"


def test_system_prompt_lists_tables_columns_rows_and_rules() -> None:
    loading = {"name": "late", "url": "http://h/late.csv", "status": "loading"}
    prompt = build_system_prompt([SALES, loading], max_tool_calls=5)
    assert "- sales (1,234 rows, from http://127.0.0.1:9/sales.csv)" in prompt
    assert "columns: region (Text), amount (Float)" in prompt
    assert "late: still loading" in prompt
    assert "Polars SQL" in prompt
    assert "LIMIT" in prompt
    assert "table names exactly" in prompt
    assert "explore first" in prompt
    assert "load_dataset" in prompt
    assert "at most 5 tool calls" in prompt
    assert NO_DATA not in prompt


def test_system_prompt_without_data_says_so() -> None:
    prompt = build_system_prompt([], max_tool_calls=5)
    assert NO_DATA in prompt and "Tables you can query" not in prompt
    failed = {"name": "t", "url": "http://h/x", "status": "error"}
    assert NO_DATA in build_system_prompt([failed], max_tool_calls=5)


def test_history_keeps_the_last_messages() -> None:
    history = talk(60)
    kept = select_history(history, max_messages=50, max_chars=10**9)
    assert kept == history[10:]


def test_history_drops_oldest_to_fit_the_character_budget() -> None:
    history = talk(20, size=100)
    kept = select_history(history, max_messages=50, max_chars=1000, reserve_chars=150)
    # 850 chars left for history: 8 messages of 100 fit; and it starts with a user message.
    assert [m["content"][:4] for m in kept] == [f"{i:04d}" for i in range(12, 20)]


def test_history_never_starts_with_an_answer_and_skips_other_roles() -> None:
    history = [{"role": "system", "content": "x"}, *talk(5)]
    kept = select_history(history, max_messages=4, max_chars=10**9)
    assert kept[0]["role"] == "user" and len(kept) == 3


def test_tool_rounds_count_toward_the_budget() -> None:
    heavy: dict[str, Any] = {
        "role": "assistant",
        "content": "a",
        "tool_rounds": [tool_round("execute_sql", {"query": "q"}, {"rows": ["y" * 500]})],
    }
    history = [{"role": "user", "content": "q"}, heavy, *talk(2)]
    kept = select_history(history, max_messages=50, max_chars=300)
    assert heavy not in kept


def test_drop_oldest_removes_ten() -> None:
    history = talk(30)
    assert drop_oldest(history) == history[10:]
    assert drop_oldest(talk(5)) == []


def _kind(part: types.Part) -> str:
    return next(k for k, v in part.model_dump().items() if v is not None)


def test_tool_rounds_replay_as_calls_and_responses() -> None:
    rounds = [
        tool_round("execute_sql", {"query": "SELECT 1"}, {"error": "bad"}, signature=b"sig"),
        tool_round("execute_sql", {"query": "SELECT 2"}, {"rows": [[2]], "total_rows": 1}),
    ]
    stored = json.loads(json.dumps(rounds))  # what Message.tool_rounds holds
    history = [
        {"role": "user", "content": "how many?"},
        {"role": "assistant", "content": "Two.", "tool_rounds": stored},
        {"role": "user", "content": "thanks"},
    ]
    contents = gemini_contents(render_history(history))
    shape = [
        (
            c.role,
            [next(k for k, v in p.model_dump().items() if v is not None) for p in c.parts or []],
        )
        for c in contents
    ]
    assert shape == [
        ("user", ["text"]),
        ("model", ["function_call"]),
        ("user", ["function_response"]),
        ("model", ["function_call"]),
        ("user", ["function_response"]),
        ("model", ["text"]),
        ("user", ["text"]),
    ]
    first_call = contents[1].parts[0]  # type: ignore[index]
    assert first_call.function_call.args == {"query": "SELECT 1"}  # type: ignore[union-attr]
    assert first_call.thought_signature == b"sig"
    response = contents[4].parts[0].function_response  # type: ignore[index]
    assert response.name == "execute_sql"  # type: ignore[union-attr]
    assert response.response == {"rows": [[2]], "total_rows": 1}  # type: ignore[union-attr]


def test_interrupted_answer_merges_into_the_next_question() -> None:
    rounds = [tool_round("execute_sql", {"query": "q"}, {"rows": []})]
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "", "tool_rounds": rounds},  # stopped before any text
        {"role": "user", "content": "b"},
    ]
    contents = gemini_contents(render_history(history))
    assert [c.role for c in contents] == ["user", "model", "user"]
    assert len(contents[2].parts or []) == 2  # the function response and "b"


def test_result_for_model_keeps_first_rows_and_counts() -> None:
    result = {"columns": ["n"], "rows": [[i] for i in range(1000)], "total_rows": 5000}
    out = result_for_model(result)
    assert out["rows"] == [[i] for i in range(50)]
    assert out["rows_shown"] == 50 and out["total_rows"] == 5000 and out["truncated"]
    assert "first 50 of 5000" in out["note"]


def test_result_for_model_fits_the_character_budget() -> None:
    row = {c: "z" * 1000 for c in "tuv"}
    wide = {"columns": list("tuv"), "rows": [row] * 100, "total_rows": 100}
    out = result_for_model(wide)
    assert len(json.dumps(out)) <= RESULT_MAX_CHARS
    assert 0 < out["rows_shown"] < 50
    assert out["rows"][0]["t"].endswith("…")


def test_small_result_is_whole() -> None:
    out = result_for_model({"columns": ["a"], "rows": [[1], [2]], "total_rows": 2})
    assert out["rows"] == [[1], [2]] and not out["truncated"] and "note" not in out
