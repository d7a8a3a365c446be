"""The chat page at `GET /` in a real headless chromium against `chatdf serve` with the loopback
fake model: sign in, the sample dataset, a streamed answer with SQL, reload, a dropped socket,
and the contract's error sentences. CHATDF_SCREENSHOTS=docs/screenshots keeps the screenshots."""

from __future__ import annotations

import json
import uuid
from typing import Any

import polars as pl
import pytest

from chatdf.settings import sample_file
from tests.fakes.fake_gemini import split_text
from tests.web.conftest import App, Tab, eventually, require_playwright

expect = require_playwright()

# The first test also waits for `chatdf serve` to start (its own Ray): more than the default 120 s
# on a loaded 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(300)]

QUERY = (
    "SELECT region, ROUND(SUM(revenue), 2) AS revenue FROM table1 "
    "GROUP BY region ORDER BY revenue DESC"
)
INTRO = "Let me add up revenue by region."
ANSWER = "North sells the most, then East, West and South. The table below has the totals."


def sign_in(tab: Tab, app: App) -> str:
    """Opens the page, signs in with dev login as a new user; returns the email."""
    email = f"page-{uuid.uuid4().hex[:8]}@example.com"
    tab.page.goto(app.url)
    expect(tab.page.locator("#signin")).to_be_visible()
    tab.page.fill("#dev-email", email)
    tab.page.click("#dev-signin")
    expect(tab.page.locator("#user-name")).to_contain_text(email)
    expect(tab.page.locator("body")).to_have_attribute("data-socket", "open")
    return email


def new_conversation(tab: Tab) -> None:
    tab.page.click("#new-conversation")
    expect(tab.page.locator("#conversation-title")).to_have_text("New conversation")


def expected_totals() -> list[tuple[str, float]]:
    """The query's answer computed here with Polars from the bundled file, not by the server."""
    frame = pl.SQLContext(table1=pl.read_parquet(sample_file())).execute(QUERY, eager=True)
    return [(str(r), float(v)) for r, v in frame.iter_rows()]


def table_rows(locator: Any) -> list[tuple[str, float]]:
    cells = locator.locator("tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    return [(region, float(revenue)) for region, revenue in cells]


def test_sign_in_dataset_streamed_sql_answer_and_history(tab: Tab, app: App) -> None:
    """sign in → sample dataset and its schema → a question whose answer runs SQL, streamed
    with its phases → SQL and result table → usage bar → reload → the history is re-read."""
    page = tab.page
    page.goto(app.url)
    expect(page.locator("#signin")).to_be_visible()
    tab.shot("01-sign-in")
    email = sign_in(tab, app)
    expect(page.locator("#usage-text")).to_have_text("0 / 5,000,000 tokens today")
    new_conversation(tab)

    page.click("#add-sample")
    dataset = page.locator("#dataset-list li.dataset")
    expect(dataset).to_have_attribute("data-status", "ready", timeout=60_000)
    expect(dataset.locator(".table-name")).to_have_text("table1")
    schema = pl.read_parquet_schema(sample_file())
    expect(dataset.locator(".size")).to_have_text(f"288 rows × {len(schema)} columns")
    expect(dataset.locator(".schema tbody tr td:first-child")).to_have_text(list(schema))
    tab.shot("02-dataset-schema")

    app.gemini.script_sql(QUERY, text=INTRO)
    held = app.gemini.script_text(ANSWER, chunks=4, hold_after=2)
    page.fill("#chat-input", "Which region sells the most?")
    page.press("#chat-input", "Enter")
    expect(page.locator(".message.user .content")).to_have_text("Which region sells the most?")
    assert held.wait_reached(60), "the model's second call never reached its hold point"
    streaming = page.locator("article.streaming")
    first_half = "".join(split_text(ANSWER, 4)[:2])  # the chunks sent before the hold
    expect(streaming.locator(".content")).to_have_text(f"{INTRO}\n\n{first_half}")
    expect(streaming.locator(".phases li")).to_have_text(
        ["Queued", "Thinking", "Running SQL", "Writing the answer"]
    )
    expect(streaming.locator('.phases li[aria-current="step"]')).to_have_text("Writing the answer")
    expect(page.locator("#stop")).to_be_visible()
    tab.shot("03-streaming")
    held.release()

    answer = page.locator("article.message.assistant:not(.streaming)")
    expect(answer.locator(".content")).to_have_text(f"{INTRO}\n\n{ANSWER}")
    expect(streaming).to_have_count(0)
    expect(answer.locator(".sql code")).to_have_text(QUERY)
    expect(answer.locator(".result-table tbody tr")).to_have_count(len(expected_totals()))
    assert table_rows(answer.locator(".result-table")) == expected_totals()
    with app.rest(tab.session_token()) as rest:
        usage = rest.get("/usage").json()
    assert usage["tokens_used"] > 0
    expect(page.locator("#usage-text")).to_have_text(
        f"{usage['tokens_used']:,} / {usage['token_limit']:,} tokens today"
    )
    fill = page.locator("#usage-fill").evaluate("e => e.style.width")
    assert fill == f"{min(100, max(0, usage['usage_percent']))}%"
    tab.shot("04-answer-sql-table")
    frames = [json.loads(f)["type"] for f in tab.frames if isinstance(f, str)]
    assert "chat_token" in frames and "chat_complete" in frames

    page.reload()
    expect(page.locator("#user-name")).to_contain_text(email)  # the cookie kept the session
    expect(page.locator("#conversation-title")).to_have_text("New conversation")
    messages = page.locator("#messages article.message")
    expect(messages).to_have_count(2)
    expect(messages.nth(0).locator(".content")).to_have_text("Which region sells the most?")
    expect(messages.nth(1).locator(".content")).to_have_text(f"{INTRO}\n\n{ANSWER}")
    expect(messages.nth(1).locator(".sql code")).to_have_text(QUERY)
    expect(messages.nth(1).locator(".result-table tbody tr")).to_have_count(4)
    assert table_rows(messages.nth(1).locator(".result-table")) == expected_totals()
    expect(page.locator("#dataset-list li.dataset .table-name")).to_have_text("table1")
    expect(page.locator("#conversation-list li")).to_have_count(1)
    expect(page.locator("#conversation-list li .meta")).to_contain_text("1 dataset")
    tab.shot("05-history-after-reload")


def test_dropped_socket_reconnects_and_rereads(tab: Tab, app: App) -> None:
    """The network drops mid-answer; the page says so, reconnects when it can, and re-reads
    the conversation: the answer that finished meanwhile is shown whole."""
    page = tab.page
    sign_in(tab, app)
    new_conversation(tab)
    held = app.gemini.script_text(ANSWER, chunks=4, hold_after=2)
    page.fill("#chat-input", "Say something long")
    page.click("#send")
    assert held.wait_reached(60)
    streaming = page.locator("article.streaming")
    expect(streaming.locator(".content")).to_have_text("".join(split_text(ANSWER, 4)[:2]))
    expect(streaming.locator(".phases li")).to_have_text(["Queued", "Thinking"])
    rereads = int(page.locator("body").get_attribute("data-reread") or 0)
    accepted = app.relay.accepted

    app.relay.cut()
    expect(page.locator("#banner")).to_have_text("Connection lost. Reconnecting…")
    expect(page.locator("body")).to_have_attribute("data-socket", "closed")
    tab.shot("06-reconnecting")
    held.release()  # the turn finishes server-side while the page is cut off
    conversation_id = page.evaluate("location.hash.slice(3)")
    with app.rest(tab.session_token()) as rest:

        def answered() -> bool:
            body = rest.get(f"/conversations/{conversation_id}").json()
            return any(m["role"] == "assistant" for m in body["messages"])

        eventually(answered, "the answer to be saved server-side")
    app.relay.restore()

    expect(page.locator("body")).to_have_attribute("data-socket", "open")
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("body")).not_to_have_attribute("data-reread", str(rereads))
    expect(page.locator("article.streaming")).to_have_count(0)
    expect(page.locator("article.message.assistant .content")).to_have_text(ANSWER)
    assert app.relay.accepted > accepted  # a new socket (and requests) went through


def test_error_sentences_are_shown(tab: Tab, app: App) -> None:
    """A bad dataset URL, a dataset that fails to load, and a model failure each show the
    contract's human sentence where the user acted."""
    page = tab.page
    sign_in(tab, app)
    new_conversation(tab)

    page.fill("#dataset-url", "not a url")
    page.click("#dataset-form button[type=submit]")
    expect(page.locator("#dataset-error .error-text")).to_have_text("Invalid URL format")
    expect(page.locator("#dataset-list li.dataset")).to_have_count(0)

    missing = app.data.url("/nowhere.csv")
    page.fill("#dataset-url", missing)
    page.click("#dataset-form button[type=submit]")
    failed = page.locator("#dataset-list li.dataset")
    expect(failed).to_have_attribute("data-status", "error", timeout=60_000)
    conversation_id = page.evaluate("location.hash.slice(3)")
    with app.rest(tab.session_token()) as rest:
        saved = rest.get(f"/conversations/{conversation_id}").json()["datasets"][0]
    assert saved["status"] == "error" and saved["error"]
    expect(failed.locator("p.error")).to_have_text(saved["error"])

    app.gemini.script_error(400, "The request was refused by the model")
    page.fill("#chat-input", "Hello?")
    with tab.next_event("chat_error") as chat_error:
        page.press("#chat-input", "Enter")
    assert chat_error["error"]
    expect(page.locator("#chat-error .error-text")).to_have_text(chat_error["error"])
    expect(page.locator("#send")).to_be_enabled()
    tab.shot("07-errors")


def test_conversations_create_rename_delete_and_sign_out(tab: Tab, app: App) -> None:
    """The list follows create, rename (a bad title shows its sentence) and delete; signing
    out returns to the sign-in form and the socket is not reopened."""
    page = tab.page
    sign_in(tab, app)
    new_conversation(tab)
    new_conversation(tab)
    items = page.locator("#conversation-list li")
    expect(items).to_have_count(2)

    page.click("#rename-conversation")
    page.fill("#rename-input", "   ")
    page.click("#rename-form button[type=submit]")
    expect(page.locator("#conversation-error .error-text")).to_have_text(
        "Title must be between 1 and 100 characters"
    )
    page.fill("#rename-input", "Revenue <b>questions</b>")
    page.click("#rename-form button[type=submit]")
    expect(page.locator("#conversation-title")).to_have_text("Revenue <b>questions</b>")
    expect(page.locator("#conversation-title b")).to_have_count(0)  # text, never markup
    expect(items.first.locator(".title")).to_have_text("Revenue <b>questions</b>")
    expect(page.locator("#conversation-error .error-text")).to_have_count(0)

    page.click("#delete-conversation")
    expect(page.locator("#delete-confirm")).to_be_visible()
    page.click("#delete-yes")
    expect(items).to_have_count(1)
    expect(items.first.locator(".title")).to_have_text("New conversation")
    expect(page.locator("#conversation-title")).to_have_text("New conversation")
    with app.rest(tab.session_token()) as rest:
        titles = [c["title"] for c in rest.get("/conversations").json()["conversations"]]
    assert titles == ["New conversation"]

    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("body")).to_have_attribute("data-socket", "closed")
    expect(page.locator("#banner")).to_be_hidden()
    page.reload()
    expect(page.locator("#signin")).to_be_visible()  # the cookie is gone
