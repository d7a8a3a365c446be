"""TokenBudget on a real SQLite file with a fake clock: window, resets, warning, restart, prune."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from actors.budget import TokenBudget, prune_cutoff, prune_usage
from chatdf.db import Database, TokenUsage
from chatdf.errors import OverBudget
from chatdf.events import parse_event
from chatdf.settings import Settings

HOUR_S = 3600
DAY_S = 24 * HOUR_S
START_S = 1_750_000_000.0  # a fixed epoch so failures are reproducible


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self, now_s: float = START_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@pytest.fixture
def budget_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"token_limit": 1000, "token_window_s": DAY_S, "token_warning_ratio": 0.8}
    )


@pytest.fixture
def database(budget_settings: Settings) -> Database:
    db = Database(budget_settings.resolved_database_url)
    db.create_schema()
    return db


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_budget(
    settings: Settings, database: Database, clock: FakeClock, user_id: str = "u1"
) -> TokenBudget:
    budget = TokenBudget(user_id, settings, database, clock=clock)
    budget.load()
    return budget


def count_rows(database: Database) -> int:
    with database.session() as session:
        return session.scalar(select(func.count()).select_from(TokenUsage)) or 0


def test_record_counts_and_writes_a_row(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    budget = make_budget(budget_settings, database, clock)
    budget.record(100, 50, conversation_id="c1")

    assert budget.used() == 150
    assert budget.remaining() == 850
    with database.session() as session:
        row = session.scalars(select(TokenUsage)).one()
    assert (row.user_id, row.conversation_id) == ("u1", "c1")
    assert (row.input_tokens, row.output_tokens) == (100, 50)
    assert row.created_at == datetime.fromtimestamp(START_S, UTC)


def test_window_slides_rather_than_resetting_at_midnight(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    budget = make_budget(budget_settings, database, clock)
    budget.record(100, 0)
    clock.advance(10 * HOUR_S)
    budget.record(200, 0)
    clock.advance(13 * HOUR_S)
    assert budget.used() == 300

    clock.advance(HOUR_S - 1)  # 1 s before the first event is 24 h old
    assert budget.used() == 300
    clock.advance(1)  # exactly 24 h: it has left the window
    assert budget.used() == 200
    clock.advance(10 * HOUR_S)
    assert budget.used() == 0


def test_resets_in_seconds_is_exact_with_rows_of_different_ages(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    budget = make_budget(budget_settings, database, clock)
    budget.record(300, 0)  # t0
    clock.advance(2 * HOUR_S)
    budget.record(300, 0)  # t0 + 2 h
    clock.advance(3 * HOUR_S)
    budget.record(500, 0)  # t0 + 5 h: 1100 used, limit 1000
    clock.advance(HOUR_S)  # now t0 + 6 h

    # Dropping the 300 at t0 leaves 800 < 1000: reset when t0 leaves, 18 h from now.
    assert budget.resets_in_seconds() == 18 * HOUR_S

    budget.record(250, 0)  # now 1350: both 300s must leave (t0 + 2 h leaves in 20 h)
    assert budget.resets_in_seconds() == 20 * HOUR_S

    clock.advance(20 * HOUR_S - 1)
    assert budget.is_exceeded()
    assert budget.resets_in_seconds() == 1
    clock.advance(1)
    assert not budget.is_exceeded()
    assert budget.resets_in_seconds() == 0
    assert budget.used() == 750


def test_resets_in_seconds_rounds_fractions_up(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    budget = make_budget(budget_settings, database, clock)
    budget.record(1000, 0)
    clock.advance(0.25)
    assert budget.resets_in_seconds() == DAY_S  # 86399.75 s ceil to 86400


def test_resets_in_seconds_is_zero_under_the_limit(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    budget = make_budget(budget_settings, database, clock)
    budget.record(999, 0)
    assert budget.resets_in_seconds() == 0
    budget.check()  # does not raise


def test_warning_crosses_at_eighty_percent(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    """WS-MSG-8 (logic): warning due at >= 80% of the limit, with the event's fields."""
    budget = make_budget(budget_settings, database, clock)
    budget.record(700, 99)
    assert not budget.warning_due()
    assert budget.usage_percent() == 79.9

    budget.record(1, 0)
    assert budget.warning_due()
    assert budget.usage_percent() == 80.0
    event = budget.warning_event(conversation_id="c1").wire()
    assert parse_event(event).type == "rate_limit_warning"
    assert event == {
        "type": "rate_limit_warning",
        "usage_percent": 80.0,
        "remaining_tokens": 200,
        "conversation_id": "c1",
    }


def test_warning_threshold_is_not_fooled_by_float_rounding(
    settings: Settings, database: Database, clock: FakeClock
) -> None:
    odd = settings.model_copy(update={"token_limit": 10, "token_warning_ratio": 0.7})
    budget = make_budget(odd, database, clock)
    budget.record(7, 0)  # 0.7 * 10 is 7.000000000000001 in floats
    assert budget.warning_due()


def test_exceeded_then_recovers_when_the_window_moves(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    """WS-MSG-9 (logic): at the limit check() refuses with resets_in_seconds; later it allows."""
    budget = make_budget(budget_settings, database, clock)
    budget.record(600, 400)
    assert budget.is_exceeded()
    assert budget.remaining() == 0

    with pytest.raises(OverBudget) as refused:
        budget.check()
    assert refused.value.status == 429
    assert refused.value.resets_in_seconds == DAY_S
    assert refused.value.error.startswith("Daily token limit reached")
    event = budget.exceeded_event(conversation_id="c1").wire()
    assert parse_event(event).type == "rate_limit_exceeded"
    assert event["resets_in_seconds"] == DAY_S

    clock.advance(DAY_S)
    budget.check()
    assert budget.used() == 0


def test_usage_over_the_limit_is_reported_above_one_hundred_percent(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    """A running turn is never cut off, so usage can end above the limit."""
    budget = make_budget(budget_settings, database, clock)
    budget.record(900, 300)
    assert budget.usage_percent() == 120.0
    assert budget.remaining() == 0


def test_snapshot_is_the_usage_body(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    budget = make_budget(budget_settings, database, clock)
    assert budget.snapshot() == {
        "tokens_used": 0,
        "token_limit": 1000,
        "remaining": 1000,
        "usage_percent": 0.0,
        "resets_in_seconds": 0,
    }
    budget.record(1000, 234)
    clock.advance(HOUR_S)
    assert budget.snapshot() == {
        "tokens_used": 1234,
        "token_limit": 1000,
        "remaining": 0,
        "usage_percent": 123.4,
        "resets_in_seconds": 23 * HOUR_S,
    }


def test_a_restarted_actor_recovers_the_exact_figure(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    first = make_budget(budget_settings, database, clock)
    first.record(400, 0, conversation_id="c1")
    clock.advance(0.123456)  # sub-second stamps must survive the round trip
    first.record(300, 0, conversation_id="c2")
    clock.advance(5 * HOUR_S)
    first.record(350, 0)
    clock.advance(HOUR_S)

    # A second actor over a second engine, as after a restart in another process.
    restarted = make_budget(budget_settings, Database(budget_settings.resolved_database_url), clock)
    assert restarted.used() == first.used() == 1050
    assert restarted.resets_in_seconds() == first.resets_in_seconds() == 18 * HOUR_S
    assert restarted.snapshot() == first.snapshot()

    restarted.record(10, 0)  # rows from the old and new actor both count after another restart
    again = make_budget(budget_settings, database, clock)
    assert again.used() == 1060


def test_load_skips_rows_outside_the_window_and_of_other_users(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    old = make_budget(budget_settings, database, clock)
    old.record(500, 0)
    make_budget(budget_settings, database, clock, user_id="u2").record(900, 0)
    clock.advance(DAY_S)
    old.record(20, 5)

    fresh = make_budget(budget_settings, database, clock)
    assert fresh.used() == 25
    assert count_rows(database) == 3


def test_negative_counts_are_refused_and_empty_usage_is_not_stored(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    budget = make_budget(budget_settings, database, clock)
    with pytest.raises(ValueError):
        budget.record(-1, 5)
    budget.record(0, 0)
    assert count_rows(database) == 0


def test_prune_deletes_only_rows_older_than_the_cutoff(
    budget_settings: Settings, database: Database, clock: FakeClock
) -> None:
    budget = make_budget(budget_settings, database, clock)
    other = make_budget(budget_settings, database, clock, user_id="u2")
    for _ in range(5):
        budget.record(1, 0)
        other.record(1, 0)
    clock.advance(DAY_S + HOUR_S)
    budget.record(7, 0)  # inside the window

    # One window later the old rows no longer count but are kept (margin of a window).
    assert prune_usage(database, prune_cutoff(budget_settings, clock())) == 0
    clock.advance(DAY_S)
    cutoff = prune_cutoff(budget_settings, clock())
    assert prune_usage(database, cutoff, user_id="u1", batch_rows=2) == 5
    assert count_rows(database) == 6
    assert prune_usage(database, cutoff, batch_rows=2) == 5
    assert count_rows(database) == 1

    assert make_budget(budget_settings, database, clock).used() == 0
    assert prune_usage(database, datetime.fromtimestamp(clock() + 1, UTC)) == 1
