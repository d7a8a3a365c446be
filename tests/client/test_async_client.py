"""AsyncClient against a live `chatdf serve`: datasets, a streamed turn, errors, a reconnect."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from chatdf.client import (
    ApiError,
    AsyncClient,
    DatasetFailed,
    NotSignedIn,
    TurnFailed,
)
from chatdf.events import ChatComplete, ChatError, ChatToken, QueryStatus, ServerEvent
from tests.client.conftest import SALES_BY_REGION, Served, unique_email
from tests.client.tcp_proxy import TcpProxy
from tests.fakes.fake_gemini import Reply
from tests.live import wait_until

pytestmark = pytest.mark.slow

ANSWER = "Let me check. \n\nNorth has 15 and South has 20."


def compact(events: list[ServerEvent]) -> list[str]:
    """Event types in order, runs of the same one folded, phases spelled out."""
    out: list[str] = []
    for e in events:
        name = f"query_status({e.phase})" if isinstance(e, QueryStatus) else e.type
        if not out or out[-1] != name:
            out.append(name)
    return out


async def signed_in(url: str) -> AsyncClient:
    client = AsyncClient(url)
    await client.dev_login(unique_email())
    return client


async def test_ask_streams_typed_events_and_returns_message_sql_rows_and_usage(
    served: Served,
) -> None:
    async with await signed_in(served.url) as client:
        conv = (await client.create_conversation("Sales")).id
        dataset = await client.add_dataset(conv, served.sales_csv())
        assert (dataset.status, dataset.name, dataset.row_count) == ("ready", "table1", 3)
        assert [c.name for c in dataset.schema_] == ["region", "revenue"]
        served.gemini.script_sql(SALES_BY_REGION, text="Let me check. ")
        served.gemini.script_text("North has 15 and South has 20.", chunks=2)
        turn = client.ask(conv, "Revenue by region?")
        events = [event async for event in turn]
    assert compact(events) == [
        "query_status(queued)",
        "query_status(generating)",
        "chat_token",
        "query_status(executing)",
        "query_status(formatting)",
        "chat_token",
        "chat_complete",
    ]
    assert "".join(e.token for e in events if isinstance(e, ChatToken)) == ANSWER
    answer = turn.answer
    assert answer is not None and not answer.recovered
    assert isinstance(events[-1], ChatComplete) and events[-1].message_id == turn.message_id
    assert answer.message.id == turn.message_id and answer.text == ANSWER
    assert answer.sql_query == SALES_BY_REGION
    assert answer.result is not None and answer.result_error is None
    assert answer.result.columns == ["region", "total"]
    assert answer.result.rows == [["N", 15], ["S", 20]]
    assert answer.token_count > 0
    assert answer.usage is not None and answer.usage.tokens_used >= answer.token_count


async def test_awaiting_ask_returns_the_answer_saved_in_the_conversation(served: Served) -> None:
    async with await signed_in(served.url) as client:
        conv = (await client.create_conversation()).id
        served.gemini.script_text("Hello there.", chunks=3)
        answer = await client.ask(conv, "Hi?")
        detail = await client.get_conversation(conv)
    assert answer.text == "Hello there." and answer.sql_query is None and answer.result is None
    assert [m.role for m in detail.messages] == ["user", "assistant"]
    assert detail.messages[-1] == answer.message


async def test_chat_error_raises_turn_failed_with_the_events_sentence(served: Served) -> None:
    async with await signed_in(served.url) as client:
        conv = (await client.create_conversation()).id
        served.gemini.script_error(400, "The prompt is not acceptable")
        turn = client.ask(conv, "Hi?")
        seen: list[ServerEvent] = []
        with pytest.raises(TurnFailed) as failed:
            async for event in turn:
                seen.append(event)
        with pytest.raises(TurnFailed) as again:  # asking the ended turn again says the same
            await turn
    assert again.value is failed.value
    error = seen[-1]
    assert isinstance(error, ChatError)
    assert failed.value.error == error.error and failed.value.error
    assert failed.value.details == error.details
    assert failed.value.message_id == turn.message_id and failed.value.conversation_id == conv


async def test_dataset_error_raises_its_sentence(served: Served) -> None:
    async with await signed_in(served.url) as client:
        conv = (await client.create_conversation()).id
        with pytest.raises(DatasetFailed) as failed:
            await client.add_dataset(conv, served.missing_csv())
        listed = (await client.get_conversation(conv)).datasets
    assert listed[0].status == "error" and listed[0].id == failed.value.dataset_id
    assert failed.value.error == listed[0].error and "404" in failed.value.error


async def test_bad_input_raises_the_contracts_error_body(served: Served) -> None:
    async with await signed_in(served.url) as client:
        conv = (await client.create_conversation()).id
        with pytest.raises(ApiError) as bad_url:
            await client.add_dataset(conv, "not a url")
        with pytest.raises(ApiError) as missing:
            await client.get_conversation("00000000-0000-0000-0000-000000000000")
    assert (bad_url.value.status, bad_url.value.error) == (400, "Invalid URL format")
    assert missing.value.status == 404 and missing.value.error


async def test_an_unknown_token_raises_not_signed_in_on_rest_and_socket(served: Served) -> None:
    async with AsyncClient(served.url, token="not-a-session-token") as client:
        with pytest.raises(NotSignedIn) as rest:
            await client.create_conversation()
        sock = await client.open_socket()
        with pytest.raises(NotSignedIn) as ws:
            await sock.next_event()
        await sock.close()
    assert rest.value.status == 401 and rest.value.error
    assert "4001" in str(ws.value.details)


async def test_a_dropped_socket_reconnects_and_rereads_a_turn_that_ended_meanwhile(
    served: Served,
) -> None:
    """The network goes away after the first token; the turn ends server-side while the client
    cannot reconnect; once it can, it re-reads the conversation and returns the saved answer."""
    proxy = TcpProxy(int(served.url.rsplit(":", 1)[1]))
    try:
        async with await signed_in(proxy.url) as client:
            conv = (await client.create_conversation()).id
            held = served.gemini.script_text("One two three four.", chunks=4, hold_after=1)
            turn = client.ask(conv, "Count?")
            tokens: list[str] = []
            async for event in turn:
                if isinstance(event, ChatToken):
                    tokens.append(event.token)
                    if len(tokens) == 1:
                        proxy.refusing.set()
                        proxy.cut()
                        held.release()
                        await asyncio.to_thread(answer_saved, served.url, client.token, conv)
                        proxy.refusing.clear()
    finally:
        proxy.close()
    answer = turn.answer
    assert answer is not None and answer.recovered
    assert len(tokens) == 1 and answer.text == "One two three four."
    assert answer.text.startswith(tokens[0]) and answer.text != tokens[0]  # the rest was missed
    assert answer.message.id == turn.message_id and answer.usage is not None


def answer_saved(url: str, token: str | None, conv: str) -> None:
    def saved() -> bool:
        detail: dict[str, Any] = httpx.get(
            f"{url}/conversations/{conv}", headers={"Authorization": f"Bearer {token}"}
        ).json()
        return [m["role"] for m in detail["messages"]] == ["user", "assistant"]

    assert wait_until(saved, 60)


async def test_a_dropped_socket_reconnects_and_streams_the_rest_of_a_running_turn(
    served: Served,
) -> None:
    """The network drops while the model pauses; the client reconnects at once, re-reads the
    conversation (no answer yet), and the rest of the turn streams on the new socket."""
    proxy = TcpProxy(int(served.url.rsplit(":", 1)[1]))
    try:
        async with await signed_in(proxy.url) as client:
            conv = (await client.create_conversation()).id
            held = served.gemini.script_text("One two three four.", chunks=4, hold_after=1)
            turn = client.ask(conv, "Count?")
            tokens: list[str] = []
            async for event in turn:
                if isinstance(event, ChatToken):
                    tokens.append(event.token)
                    if len(tokens) == 1:
                        proxy.cut()
                        release_after_reread(proxy, conv, held)
    finally:
        held.release()
        proxy.close()
    answer = turn.answer
    assert answer is not None and not answer.recovered
    assert "".join(tokens) == answer.text == "One two three four."


def release_after_reread(proxy: TcpProxy, conv: str, held: Reply) -> None:
    """Lets the model go on once the client, reconnected, has its re-read of the conversation
    (so the turn cannot end before that answer, which would make it a recovered one)."""
    answered = f'{{"id":"{conv}"'.encode()  # the GET's body; events say "conversation_id"

    def run() -> None:
        if wait_until(lambda: proxy.passed_since_cut(answered, from_client=False)):
            held.release()

    threading.Thread(target=run, daemon=True).start()
