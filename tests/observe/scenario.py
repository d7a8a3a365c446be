"""One observed turn for the observability tests: a dataset, a message whose answer runs SQL."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer

SALES_CSV = b"region,revenue\nN,10\nS,20\nN,5\n"
SQL = "SELECT region, SUM(revenue) AS t FROM table1 GROUP BY 1 ORDER BY 1"


@dataclass
class Turn:
    token: str
    user_id: str
    conversation_id: str
    message_id: str
    request_id: str  # the X-Request-ID the message was posted with


def run_turn(
    server: LiveServer,
    fake_gemini: FakeGemini,
    data_server: FakeDataServer,
    usage: tuple[int, int] = (10, 5),
) -> Turn:
    """Signs a new user in, attaches a CSV, posts a message answered with SQL then text, and
    waits (on the socket) for the chat_complete."""
    token, user_id, client = server.login(f"obs-{uuid.uuid4().hex[:8]}@example.com")
    request_id = f"test-{uuid.uuid4().hex[:12]}"
    with client, server.ws(token) as ws:
        conv = client.post("/conversations").json()["id"]
        url = data_server.add(f"/{uuid.uuid4().hex[:6]}.csv", SALES_CSV)
        added = client.post(f"/conversations/{conv}/datasets", json={"url": url})
        assert added.status_code == 201, added.text
        ws.receive_until("dataset_loaded", timeout=60)
        fake_gemini.script_sql(SQL)
        fake_gemini.script_text("N has 15 and S has 20.", usage=usage)
        posted = client.post(
            f"/conversations/{conv}/messages",
            json={"content": "Revenue by region?"},
            headers={"X-Request-ID": request_id},
        )
        assert posted.status_code == 202, posted.text
        assert posted.headers["x-request-id"] == request_id
        done = ws.receive_until("chat_complete", timeout=60)[-1]
        assert done["message"]["sql_query"] == SQL
    return Turn(token, user_id, conv, posted.json()["message_id"], request_id)
