"""Observability inside session actors and tasks: Ray metrics of turns, phases, model tokens, SQL,
loads and budget refusals; the edge's call context (log ids, trace) bound for each call.

The metrics are `ray.util.metrics` objects, so Ray's own export (each node's metrics agent, the
port Prometheus scrapes for Ray) carries them, prefixed `ray_`. They are created once per
process on first use, never at import, and only where Ray runs (plain-class unit tests record
nothing).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

from chatdf import logs, tracing
from chatdf.errors import ChatdfError
from chatdf.settings import Settings

SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]
CONTEXT_ARG = "call_context"


class Metrics:
    """The series one process records (created by `metrics()`, once)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        self.turn_seconds = Histogram(
            "chatdf_turn_duration_seconds",
            "A chat turn from admission to its saved answer, by outcome",
            boundaries=SECONDS,
            tag_keys=("outcome",),
        )
        self.phase_seconds = Histogram(
            "chatdf_turn_phase_seconds",
            "Time a turn spent in each query_status phase",
            boundaries=SECONDS,
            tag_keys=("phase",),
        )
        self.model_tokens = Counter(
            "chatdf_model_tokens",
            "Model tokens, by direction (in: prompt, out: answer) and model",
            tag_keys=("direction", "model"),
        )
        self.sql_seconds = Histogram(
            "chatdf_sql_duration_seconds",
            "SQL runs (slot wait included), by outcome",
            boundaries=SECONDS,
            tag_keys=("outcome",),
        )
        self.sql_failures = Counter(
            "chatdf_sql_failures",
            "SQL that was refused or failed, by error class",
            tag_keys=("reason",),
        )
        self.load_seconds = Histogram(
            "chatdf_dataset_load_duration_seconds",
            "Dataset loads (inspection task), by outcome",
            boundaries=SECONDS,
            tag_keys=("outcome",),
        )
        self.budget_refusals = Counter(
            "chatdf_budget_refusals",
            "Messages refused by the token budget (exceeded, or held by running turns)",
            tag_keys=("reason",),
        )


_metrics: Metrics | None = None


def metrics() -> Metrics | None:
    """This process's metrics; None outside Ray (unit tests of the plain classes)."""
    global _metrics
    if _metrics is None:
        import ray

        if not ray.is_initialized():
            return None
        _metrics = Metrics()
    return _metrics


# Call context ----------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def from_edge(method: F) -> F:
    """Makes an actor method take the edge's `call_context` (keyword) and bind it for the call:
    the ids on every log line, the edge's span as the parent of the spans the call opens.
    Tasks the call starts (a turn) inherit both (asyncio copies the context)."""

    @functools.wraps(method)
    async def call(
        self: Any, *args: Any, call_context: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Any:
        with logs.bound(call_context), tracing.attached(self.settings, call_context):
            return await method(self, *args, **kwargs)

    # Ray checks call arguments against the signature of the unwrapped method: this one is the
    # method's own, plus the keyword.
    del call.__wrapped__
    signature = inspect.signature(method)
    extra = inspect.Parameter(CONTEXT_ARG, inspect.Parameter.KEYWORD_ONLY, default=None)
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), extra]
    )
    return call  # type: ignore[return-value]


def start_process(settings: Settings) -> None:
    """Once per actor process: LOG_FORMAT=json lines (with the ids) in Ray's worker log."""
    logs.configure_worker(settings.log_format, settings.log_level)


# Turns -----------------------------------------------------------------------------------

Publish = Callable[[dict[str, Any]], Awaitable[None]]


class PhaseClock:
    """Times one turn: each query_status phase until the next, and the whole turn."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.phase: str | None = None
        self.since = self.started

    def enter(self, phase: str | None) -> None:
        now = time.monotonic()
        found = metrics()
        if self.phase is not None and found is not None:
            found.phase_seconds.observe(now - self.since, tags={"phase": self.phase})
        self.phase, self.since = phase, now

    def watching(self, publish: Publish) -> Publish:
        """`publish` that also notes the turn's query_status phases as they go out."""

        async def emit(event: dict[str, Any]) -> None:
            if event.get("type") == "query_status":
                self.enter(event.get("phase"))
            await publish(event)

        return emit

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def end(self, outcome: str) -> None:
        self.enter(None)
        found = metrics()
        if found is not None:
            found.turn_seconds.observe(time.monotonic() - self.started, tags={"outcome": outcome})


def model_tokens(model: str, inp: int, out: int) -> None:
    found = metrics()
    if found is not None:
        if inp:
            found.model_tokens.inc(inp, tags={"direction": "in", "model": model})
        if out:
            found.model_tokens.inc(out, tags={"direction": "out", "model": model})


def budget_refused(reason: str) -> None:
    found = metrics()
    if found is not None:
        found.budget_refusals.inc(tags={"reason": reason})


class TracedModel:
    """A model client whose calls are spans (with their token counts); only when tracing."""

    def __init__(self, llm: Any, settings: Settings) -> None:
        self._llm = llm
        self._settings = settings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    async def generate(self, *args: Any, **kwargs: Any) -> Any:
        attributes = {"gen_ai.request.model": getattr(self._settings, "gemini_model", "")}
        with tracing.span(self._settings, "model.generate", attributes, kind="CLIENT") as span:
            reply = await self._llm.generate(*args, **kwargs)
            if span is not None:
                span.set_attribute("chatdf.tool_calls", len(getattr(reply, "calls", ()) or ()))
            return reply


def traced_model(llm: Any, settings: Settings) -> Any:
    return TracedModel(llm, settings) if settings.otel_enabled else llm


# SQL and loads ---------------------------------------------------------------------------


@contextmanager
def sql_run(settings: Settings) -> Iterator[None]:
    """Times one SQL run (a span too) and counts it by outcome; refusals and errors by class."""
    with _timed(settings, "sql.query", "sql") as note:
        yield
        note["outcome"] = "ok"


@contextmanager
def dataset_load(settings: Settings) -> Iterator[None]:
    with _timed(settings, "dataset.load", "load") as note:
        yield
        note["outcome"] = "ok"


@contextmanager
def _timed(settings: Settings, span_name: str, kind: str) -> Iterator[dict[str, str]]:
    note = {"outcome": "error"}
    started = time.monotonic()
    with ExitStack() as stack:
        stack.enter_context(tracing.span(settings, span_name, kind="CLIENT"))
        try:
            yield note
        except ChatdfError as exc:
            _failed(kind, type(exc).__name__)
            raise
        except BaseException as exc:
            note["outcome"] = "cancelled" if _is_cancel(exc) else "error"
            if note["outcome"] == "error":
                _failed(kind, type(exc).__name__)
            raise
        finally:
            found = metrics()
            if found is not None:
                series = found.sql_seconds if kind == "sql" else found.load_seconds
                series.observe(time.monotonic() - started, tags={"outcome": note["outcome"]})


def _failed(kind: str, reason: str) -> None:
    found = metrics()
    if found is not None and kind == "sql":
        found.sql_failures.inc(tags={"reason": reason})


def _is_cancel(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError)
