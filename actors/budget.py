"""One user's rolling 24-hour token budget: the in-memory copy the actor checks, and its rows."""

from __future__ import annotations

import math
import threading
import time
from bisect import insort
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select

from chatdf.db import Database, TokenUsage
from chatdf.errors import OverBudget
from chatdf.events import RateLimitExceeded, RateLimitWarning
from chatdf.settings import Settings

Clock = Callable[[], float]

# Rows are kept this many windows before pruning, so a late or skewed clock never
# deletes usage that still counts (see docs/budgets.md).
PRUNE_MARGIN_WINDOWS = 2
PRUNE_BATCH_ROWS = 5000


def _to_datetime(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


class TokenBudget:
    """Usage events of one user inside a rolling window; the database holds the truth.

    An event at time `t` counts while `now < t + token_window_s`. Reads are served from
    memory; `load()` and `record()` touch the database and are meant to run in a thread.
    """

    def __init__(
        self,
        user_id: str,
        settings: Settings,
        database: Database,
        clock: Clock = time.time,
    ) -> None:
        self.user_id = user_id
        self.limit = settings.token_limit
        self.window_s = float(settings.token_window_s)
        # Rounded first so 0.7 * 10 gives 7, not 7.000000000000001.
        self.warning_tokens = math.ceil(round(settings.token_warning_ratio * self.limit, 6))
        self._database = database
        self._clock = clock
        self._events: deque[tuple[float, int]] = deque()  # (epoch seconds, tokens), oldest first
        self._total = 0
        # _memory guards the deque (reads come from the event loop, writes from threads);
        # _writes serialises load/record so a reload never drops a row being recorded.
        self._memory = threading.Lock()
        self._writes = threading.Lock()

    # -- database side (sync; call through asyncio.to_thread) --------------------------------

    def load(self) -> None:
        """Replace the in-memory copy with the user's rows of the current window."""
        with self._writes:
            now = self._clock()
            since = _to_datetime(now - self.window_s)
            query = (
                select(TokenUsage.created_at, TokenUsage.input_tokens, TokenUsage.output_tokens)
                .where(TokenUsage.user_id == self.user_id, TokenUsage.created_at > since)
                .order_by(TokenUsage.created_at, TokenUsage.id)
            )
            with self._database.session() as session:
                rows = session.execute(query).all()
            events = [(at.timestamp(), (inp or 0) + (out or 0)) for at, inp, out in rows]
            with self._memory:
                self._events = deque(e for e in events if e[1] > 0)
                self._total = sum(tokens for _, tokens in self._events)

    def record(
        self, input_tokens: int, output_tokens: int, conversation_id: str | None = None
    ) -> None:
        """Insert one usage row stamped by the clock, then count it in memory."""
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError("token counts cannot be negative")
        tokens = input_tokens + output_tokens
        if tokens == 0:
            return  # an empty row would only cost a write
        with self._writes:
            created_at = _to_datetime(self._clock())
            with self._database.session() as session:
                session.add(
                    TokenUsage(
                        user_id=self.user_id,
                        conversation_id=conversation_id,
                        input_tokens=input_tokens,
                        output_tokens=output_tokens,
                        created_at=created_at,
                    )
                )
            # The stamp goes through datetime (microseconds) so memory equals what load() reads.
            with self._memory:
                insort(self._events, (created_at.timestamp(), tokens))
                self._total += tokens

    # -- reads (memory only, cheap) -----------------------------------------------------------

    def used(self) -> int:
        """Tokens spent inside the window ending now."""
        with self._memory:
            self._forget(self._clock())
            return self._total

    def remaining(self) -> int:
        return max(0, self.limit - self.used())

    def usage_percent(self) -> float:
        """Share of the limit spent, in percent, two decimals; may exceed 100."""
        return self._percent(self.used())

    def is_exceeded(self, reserved: int = 0) -> bool:
        """Spent, counting `reserved` tokens promised to turns still running."""
        return self.used() + reserved >= self.limit

    def warning_due(self) -> bool:
        """Usage is at or above the warning ratio (80% by default) of the limit."""
        return self.used() >= self.warning_tokens

    def resets_in_seconds(self) -> int:
        """Whole seconds until enough old usage leaves the window to fall below the limit."""
        with self._memory:
            now = self._clock()
            self._forget(now)
            return self._resets_in(now)

    def snapshot(self) -> dict[str, Any]:
        """The `GET /usage` body, every figure taken at the same instant."""
        with self._memory:
            now = self._clock()
            self._forget(now)
            used, resets_in = self._total, self._resets_in(now)
        return {
            "tokens_used": used,
            "token_limit": self.limit,
            "remaining": max(0, self.limit - used),
            "usage_percent": self._percent(used),
            "resets_in_seconds": resets_in,
        }

    def check(self, reserved: int = 0) -> None:
        """Refuse a new message when the budget is spent, counting `reserved` tokens for the
        user's turns still running; a running turn is never checked."""
        if not self.is_exceeded(reserved):
            return
        resets_in = self.resets_in_seconds()
        raise OverBudget(
            error=f"Daily token limit reached. You can send messages again in {_human(resets_in)}.",
            details=(
                f"{self.used()} of {self.limit} tokens used in the last "
                f"{_human(int(self.window_s))}"
            ),
            resets_in_seconds=resets_in,
        )

    def warning_event(self, conversation_id: str | None = None) -> RateLimitWarning:
        return RateLimitWarning(
            usage_percent=self.usage_percent(),
            remaining_tokens=self.remaining(),
            conversation_id=conversation_id,
        )

    def exceeded_event(self, conversation_id: str | None = None) -> RateLimitExceeded:
        return RateLimitExceeded(
            resets_in_seconds=self.resets_in_seconds(), conversation_id=conversation_id
        )

    def _percent(self, used: int) -> float:
        if self.limit <= 0:
            return 100.0
        return round(used * 100 / self.limit, 2)

    def _resets_in(self, now: float) -> int:
        # Caller holds _memory and has called _forget(now).
        total = self._total
        if total < self.limit:
            return 0
        for at, tokens in self._events:
            total -= tokens
            if total < self.limit:
                # at + window > now because the event is still inside the window.
                return max(1, math.ceil(at + self.window_s - now))
        # Only reachable with a limit <= 0, which no amount of waiting satisfies.
        return math.ceil(self.window_s)

    def _forget(self, now: float) -> None:
        # Caller holds _memory. Events are sorted, so the expired ones are a prefix.
        horizon = now - self.window_s
        while self._events and self._events[0][0] <= horizon:
            self._total -= self._events.popleft()[1]


def prune_cutoff(settings: Settings, now_s: float) -> datetime:
    """Rows older than this no longer count for anyone, with a margin of a whole window."""
    return _to_datetime(now_s - PRUNE_MARGIN_WINDOWS * settings.token_window_s)


def prune_usage(
    database: Database,
    older_than: datetime,
    user_id: str | None = None,
    batch_rows: int = PRUNE_BATCH_ROWS,
) -> int:
    """Delete token_usage rows created before `older_than`; returns how many went.

    Works in batches, one short transaction each, so a large backlog never holds
    SQLite's write lock for long. Background only: never call it in a request path.
    """
    deleted = 0
    while True:
        ids = select(TokenUsage.id).where(TokenUsage.created_at < older_than)
        if user_id is not None:
            ids = ids.where(TokenUsage.user_id == user_id)
        with database.session() as session:
            batch = list(session.scalars(ids.limit(batch_rows)))
            if batch:
                session.execute(delete(TokenUsage).where(TokenUsage.id.in_(batch)))
        deleted += len(batch)
        if len(batch) < batch_rows:
            return deleted


def _human(seconds: int) -> str:
    """'3 h 12 min', '4 min', '20 s': enough precision for a person waiting."""
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
