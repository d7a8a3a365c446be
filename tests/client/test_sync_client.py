"""The blocking Client against a live `chatdf serve`, from plain code and from inside a running
event loop (a notebook's case)."""

from __future__ import annotations

import pytest

from chatdf.client import ApiError, Client, ConnectionFailed, DatasetFailed
from chatdf.events import ChatComplete, ChatToken
from tests.client.conftest import SALES_BY_REGION, Served, unique_email
from tests.live import free_port

pytestmark = pytest.mark.slow


def test_sync_client_streams_a_turn_and_manages_conversations(served: Served) -> None:
    with Client(served.url) as client:
        user = client.dev_login(unique_email(), name="Script")
        assert client.me() == user and user.name == "Script"
        conv = client.create_conversation().id
        dataset = client.add_dataset(conv, served.sales_csv())
        assert dataset.status == "ready" and dataset.column_count == 2
        served.gemini.script_sql(SALES_BY_REGION)
        served.gemini.script_text("S leads.", chunks=2)
        turn = client.ask(conv, "Who leads?")
        events = list(turn)
        assert isinstance(events[-1], ChatComplete)
        assert "".join(e.token for e in events if isinstance(e, ChatToken)) == "S leads."
        assert turn.answer is not None and turn.answer.result is not None
        assert turn.answer.result.rows == [["N", 15], ["S", 20]]
        served.gemini.script_text("Still S.", chunks=1)
        second = client.ask(conv, "And now?").result()
        assert second.text == "Still S." and second.sql_query is None
        assert client.query(conv, "SELECT COUNT(*) AS n FROM table1").rows == [[3]]
        renamed = client.rename_dataset(conv, dataset.id, "sales")
        assert renamed.name == "sales"
        assert client.rename_conversation(conv, "Leaders").title == "Leaders"
        listed = client.list_conversations()
        assert [(c.id, c.title, c.dataset_count) for c in listed] == [(conv, "Leaders", 1)]
        assert len(client.get_conversation(conv).messages) == 4
        with pytest.raises(DatasetFailed):
            client.add_dataset(conv, served.missing_csv())
        client.delete_conversation(conv)
        with pytest.raises(ApiError) as gone:
            client.get_conversation(conv)
        assert gone.value.status == 404
        client.logout()
        assert client.token is None


async def test_sync_client_works_inside_a_running_event_loop(served: Served) -> None:
    """Jupyter runs cells inside an event loop: the blocking client runs on its own thread's."""
    with Client(served.url) as client:
        client.dev_login(unique_email())
        conv = client.create_conversation().id
        served.gemini.script_text("From a notebook.", chunks=2)
        assert client.ask(conv, "Hi?").result().text == "From a notebook."


def test_an_unreachable_server_raises_connection_failed() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url) as client, pytest.raises(ConnectionFailed) as failed:
        client.dev_login()
    assert failed.value.error == f"Cannot reach chatdf at {url}"
