"""The session actor never imports Polars: loads, queries and chat turns run it only in tasks."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import ray

from actors.session_ray import get_session_actor
from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer

SALES_CSV = b"region,revenue\nN,10\nS,20\nN,5\n"
NUMBERS_CSV = b"n\n" + b"".join(f"{i}\n".encode() for i in range(1500))  # over query_max_rows


def add_dataset(client: httpx.Client, conv: str, url: str, until: str = "ready") -> str:
    """Attaches a URL and polls until its load ends in `until` (the limit only bounds a failure)."""
    added = client.post(f"/conversations/{conv}/datasets", json={"url": url})
    assert added.is_success, added.text
    dataset_id: str = added.json()["dataset_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        datasets = client.get(f"/conversations/{conv}").json()["datasets"]
        status = next(d["status"] for d in datasets if d["id"] == dataset_id)
        if status != "loading":
            assert status == until, datasets
            return dataset_id
        time.sleep(0.05)
    raise AssertionError("the dataset load never finished")


def wait_assistant(client: httpx.Client, conv: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        messages = client.get(f"/conversations/{conv}").json()["messages"]
        answers = [m for m in messages if m["role"] == "assistant"]
        if answers:
            return answers[-1]  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError("the assistant message was never saved")


def test_session_actor_never_imports_polars(
    chat_live: LiveServer, fake_gemini: FakeGemini, data_server: FakeDataServer
) -> None:
    _, user_id, client = chat_live.login(f"imports-{uuid.uuid4().hex[:8]}@example.com")
    with client:
        conv = client.post("/conversations").json()["id"]
        sales = add_dataset(client, conv, data_server.add("/sales.csv", SALES_CSV))
        add_dataset(client, conv, data_server.add("/numbers.csv", NUMBERS_CSV))
        add_dataset(client, conv, data_server.add("/gone.csv", status=404), until="error")
        refreshed = client.post(f"/conversations/{conv}/datasets/{sales}/refresh")
        assert refreshed.status_code == 200, refreshed.text

        def query(sql: str) -> httpx.Response:
            return client.post(f"/conversations/{conv}/query", json={"sql": sql})

        grouped = query("SELECT region, SUM(revenue) AS t FROM table1 GROUP BY 1 ORDER BY 1")
        assert grouped.json()["rows"] == [["N", 15], ["S", 20]]
        counted = query("SELECT n FROM table2").json()  # rows first, then the count
        assert (counted["truncated"], counted["total_rows"]) == (True, 1500)
        failed = query("SELECT revnue FROM table1")
        assert failed.status_code == 400
        assert failed.json()["error"].startswith("Column 'revnue' does not exist")
        # sqlglot accepts this and Polars cannot parse it: refused by the task's cross-check.
        refused = query("SELECT * FROM table1 USING SAMPLE 10")
        assert refused.status_code == 400
        assert refused.json()["error"] == "The query engine could not parse the SQL"

        sql = "SELECT region FROM table1 ORDER BY region"
        fake_gemini.script_sql(sql)
        fake_gemini.script_text("Regions N and S.")
        posted = client.post(f"/conversations/{conv}/messages", json={"content": "Which regions?"})
        assert posted.status_code == 202
        assert wait_assistant(client, conv)["sql_query"] == sql
        assert "S" in str(fake_gemini.requests[-1].function_responses())

    health = ray.get(get_session_actor(user_id, chat_live.settings).check_health.remote())
    assert health["user_id"] == user_id
    assert health["polars_loaded"] is False
    assert health["sqlglot_loaded"] is False  # the task checks SQL; the actor holds no parser
    # Kept out of the process (actors/keep_out.py), through loads, queries, errors and a turn.
    assert health["kept_out_loaded"] == []
    assert health["model_sdks_loaded"] == ["google.genai"]  # MODEL_PROVIDER=gemini: no openai
