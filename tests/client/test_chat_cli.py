"""`chatdf chat` as a user runs it (a subprocess) against a live `chatdf serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

import httpx
import pytest

from tests.client.conftest import SALES_BY_REGION, Served, unique_email
from tests.live import free_port
from tests.serving import CHATDF

pytestmark = pytest.mark.slow


def chat(
    *args: str, stdin: str = "", token: str | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATDF_")}
    if token:
        env["CHATDF_TOKEN"] = token
    return subprocess.run(
        [str(CHATDF), "chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
    )


def token_of(served: Served) -> str:
    body = httpx.post(f"{served.url}/auth/dev-login", json={"email": unique_email()}).json()
    return str(body["token"])


def table_cells(out: str) -> list[list[str]]:
    """The cells of the table rich drew (header first)."""
    rows = []
    for line in out.splitlines():
        if line[:1] in ("│", "┃"):
            rows.append([cell.strip() for cell in line.replace("┃", "│").strip("│").split("│")])
    return rows


def test_one_question_with_a_dataset_streams_the_answer_sql_and_table(served: Served) -> None:
    """No token: the CLI signs in through dev login (the server runs on this machine)."""
    served.gemini.script_sql(SALES_BY_REGION, text="Let me check. ")
    served.gemini.script_text("North has 15 and South has 20.", chunks=2)
    run = chat("--url", served.url, "--dataset", served.sales_csv(), "Revenue by region?")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.startswith("Let me check. \n\nNorth has 15 and South has 20.\n"), out
    assert SALES_BY_REGION in " ".join(out.split())  # the SQL, perhaps wrapped
    assert table_cells(out) == [["region", "total"], ["N", "15"], ["S", "20"]], out
    assert "table1: 3 rows (region Text, revenue Integer) from http://" in run.stderr, run.stderr
    assert "[running SQL]" in run.stderr and "tokens · " in run.stderr


def test_json_prints_one_parsable_answer(served: Served) -> None:
    """CHATDF_TOKEN signs in; --json gives a machine the answer, its SQL, rows and usage."""
    token = token_of(served)
    served.gemini.script_sql(SALES_BY_REGION)
    served.gemini.script_text("S leads.", chunks=2)
    run = chat("--url", served.url, "--dataset", served.sales_csv(), "--json", "Who?", token=token)
    assert run.returncode == 0, run.stderr
    body: dict[str, Any] = json.loads(run.stdout)
    assert body["question"] == "Who?" and body["text"] == "S leads."
    assert body["sql_query"] == SALES_BY_REGION, body
    assert body["result"]["columns"] == ["region", "total"]
    assert body["result"]["rows"] == [["N", 15], ["S", 20]]
    assert body["usage"]["tokens_used"] >= body["token_count"] > 0
    assert body["message"]["content"] == "S leads." and body["datasets"][0]["name"] == "table1"
    mine = httpx.get(
        f"{served.url}/conversations/{body['conversation_id']}",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert mine.status_code == 200  # asked as the token's user
    assert token not in run.stdout + run.stderr


def test_interactive_mode_reads_questions_and_commands_from_stdin(served: Served) -> None:
    served.gemini.script_text("First answer.", chunks=2)
    served.gemini.script_text("Second answer.", chunks=2)
    stdin = "\n".join(
        [
            f"/dataset {served.sales_csv()}",
            "First?",
            "",
            "/sql SELECT SUM(revenue) AS s FROM table1",
            "Second?",
            "/quit",
            "Never asked?",
        ]
    )
    run = chat("--url", served.url, "--json", stdin=stdin + "\n", token=token_of(served))
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line.get("text") for line in lines] == ["First answer.", None, "Second answer."]
    assert lines[1]["rows"] == [[35]]
    assert lines[0]["conversation_id"] == lines[2]["conversation_id"]
    assert served.gemini.pending() == 0


def test_interactive_mode_for_people_streams_each_answer(served: Served) -> None:
    served.gemini.script_text("Plain answer.", chunks=3)
    run = chat("--url", served.url, stdin="Hello?\n", token=token_of(served))
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Plain answer.\n"), run.stdout


def test_a_bad_dataset_url_prints_the_contracts_sentence_and_fails(served: Served) -> None:
    run = chat("--url", served.url, "--dataset", "not a url", "Hi?", token=token_of(served))
    assert run.returncode == 1
    assert run.stderr.startswith("chatdf: Invalid URL format"), run.stderr
    assert run.stdout == ""
    as_json = chat(
        "--url", served.url, "--dataset", "nope", "--json", "Hi?", token=token_of(served)
    )
    assert as_json.returncode == 1
    body = json.loads(as_json.stdout)
    assert set(body) == {"error", "details"} and body["error"] == "Invalid URL format"


def test_a_dataset_that_fails_to_load_prints_its_dataset_error(served: Served) -> None:
    run = chat(
        "--url", served.url, "--dataset", served.missing_csv(), "Hi?", token=token_of(served)
    )
    assert run.returncode == 1
    assert run.stderr.startswith("chatdf: ") and "404" in run.stderr, run.stderr


def test_a_failed_turn_in_interactive_mode_is_reported_and_the_next_question_asked(
    served: Served,
) -> None:
    served.gemini.script_error(400, "The prompt is not acceptable")
    served.gemini.script_text("Recovered.", chunks=1)
    run = chat("--url", served.url, "--json", stdin="Bad?\nGood?\n", token=token_of(served))
    assert run.returncode == 1  # one question failed
    first, second = (json.loads(line) for line in run.stdout.splitlines())
    assert first["error"] and set(first) == {"error", "details"}
    assert second["text"] == "Recovered."
    assert f"chatdf: {first['error']}" in run.stderr


def test_a_bad_token_and_an_unreachable_server_fail_with_a_sentence(served: Served) -> None:
    bad = chat("--url", served.url, "Hi?", token="not-a-token")
    assert bad.returncode == 1 and bad.stderr.startswith("chatdf: Not signed in"), bad.stderr
    url = f"http://127.0.0.1:{free_port()}"
    gone = chat("--url", url, "Hi?")
    assert gone.returncode == 1 and gone.stderr.startswith(f"chatdf: Cannot reach chatdf at {url}")


def test_ctrl_c_during_an_answer_stops_the_turn_and_keeps_the_partial_answer(
    served: Served,
) -> None:
    held = served.gemini.script_text("One two three four.", chunks=4, hold_after=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATDF_")}
    env["CHATDF_TOKEN"] = token_of(served)
    proc = subprocess.Popen(
        [str(CHATDF), "chat", "--url", served.url, "Count?"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    try:
        first = proc.stdout.read(5)  # the first chunk, streamed before the model's pause
        assert first == b"One t"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        held.release()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert b"(stopped)" in err
    assert (first + out).decode().startswith("One t\n"), out
