"""The chat page against `chatdf serve` with no model key, as a newcomer first runs it: the
sample and direct SQL work, and a question gets the server's sentence saying why it cannot."""

from __future__ import annotations

import pytest

from tests.web.conftest import App, Tab, require_playwright
from tests.web.test_page import new_conversation, sign_in

expect = require_playwright()

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture
def app(app_without_model: App) -> App:
    return app_without_model


def test_without_a_model_key_sql_works_and_chat_says_why(tab: Tab, app: App) -> None:
    page = tab.page
    sign_in(tab, app)
    new_conversation(tab)
    page.click("#add-sample")
    expect(page.locator("#dataset-list li.dataset")).to_have_attribute("data-status", "ready")

    page.click("#sql-box summary")
    page.fill("#sql-input", "SELECT COUNT(*) AS n FROM table1")
    page.click("#sql-form button[type=submit]")
    result = page.locator("#sql-result .result-table")
    expect(result.locator("th")).to_have_text(["n"])
    expect(result.locator("tbody td")).to_have_text(["288"])

    page.fill("#sql-input", "DROP TABLE table1")
    page.click("#sql-form button[type=submit]")
    expect(page.locator("#sql-error .error-text")).to_have_count(1)
    expect(page.locator("#sql-result .result-table")).to_have_count(0)

    page.fill("#chat-input", "Which region sells the most?")
    with tab.next_event("chat_error") as chat_error:
        page.press("#chat-input", "Enter")
    assert chat_error["error"]
    expect(page.locator("#chat-error .error-text")).to_have_text(chat_error["error"])
    expect(page.locator("#messages article.message")).to_have_count(0)  # nothing was saved
    expect(page.locator("#chat-input")).to_have_value("Which region sells the most?")
    tab.shot("08-no-model")
