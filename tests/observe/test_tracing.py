"""OTEL_ENABLED traces: one trace per turn, from the edge's request span through the session
actor's turn to its model calls and SQL (and into the SQL task's worker), exported over
OTLP/HTTP to a loopback collector by each process."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.fakes.fake_otlp import FakeCollector, ReceivedSpan
from tests.live import LiveServer, wait_until
from tests.observe.scenario import run_turn

POST_MESSAGE = "POST /conversations/{conversation_id}/messages"


@pytest.fixture
def traced_live(
    ray_session: None, gemini_settings: Settings, otlp_collector: FakeCollector
) -> Iterator[LiveServer]:
    update = {
        "otel_enabled": True,
        "otel_exporter_otlp_endpoint": otlp_collector.endpoint,
        "otel_service_name": "chatdf-trace-test",
    }
    server = LiveServer(gemini_settings.model_copy(update=update)).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_a_turn_is_one_trace_edge_actor_model_sql(
    traced_live: LiveServer,
    fake_gemini: FakeGemini,
    data_server: FakeDataServer,
    otlp_collector: FakeCollector,
) -> None:
    turn = run_turn(traced_live, fake_gemini, data_server)
    spans: dict[str, list[ReceivedSpan]] = {}

    def turn_exported() -> bool:
        spans.clear()
        for span in otlp_collector.received():
            if span.attributes.get("chatdf.message_id") == turn.message_id:
                spans.setdefault("turn", []).append(span)
        if not spans:
            return False
        trace = spans["turn"][0].trace_id
        for span in otlp_collector.received():
            if span.trace_id == trace:
                spans.setdefault(span.name, []).append(span)
        return len(spans.get("model.generate", [])) == 2 and "sql.execute" in spans

    assert wait_until(turn_exported, limit_s=30), otlp_collector.received()
    (edge,) = spans[POST_MESSAGE]
    (chat_turn,) = spans["chat.turn"]
    assert edge.parent_id == ""  # the client sent no traceparent
    assert edge.attributes["http.route"] == "/conversations/{conversation_id}/messages"
    assert edge.attributes["http.response.status_code"] == 202
    assert edge.attributes["chatdf.request_id"] == turn.request_id
    assert chat_turn.parent_id == edge.span_id  # across the Ray call to the actor
    assert chat_turn.attributes["chatdf.conversation_id"] == turn.conversation_id
    assert {s.parent_id for s in spans["model.generate"]} == {chat_turn.span_id}
    (sql,) = spans["sql.query"]
    assert sql.parent_id == chat_turn.span_id
    (task,) = spans["sql.execute"]  # in the Ray task's worker process
    assert task.parent_id == sql.span_id
    services = {s.service for group in spans.values() for s in group}
    assert services == {"chatdf-trace-test"}


@pytest.mark.slow
def test_an_incoming_traceparent_is_the_request_spans_parent(
    traced_live: LiveServer, otlp_collector: FakeCollector
) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    r = httpx.get(
        f"{traced_live.url}/health", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}
    )
    assert r.status_code == 200

    def exported() -> list[ReceivedSpan]:
        return [s for s in otlp_collector.received() if s.trace_id == trace_id]

    assert wait_until(lambda: bool(exported()), limit_s=30)
    (span,) = exported()
    assert (span.name, span.parent_id) == ("GET /health", parent_id)


def test_tracing_is_off_by_default(live: LiveServer, otlp_collector: FakeCollector) -> None:
    from chatdf import tracing

    assert live.settings.otel_enabled is False
    assert tracing.tracer(live.settings) is None
    assert httpx.get(f"{live.url}/health").status_code == 200
    assert otlp_collector.received() == []
