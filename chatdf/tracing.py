"""Optional OpenTelemetry traces (OTEL_ENABLED, off by default): spans and their context across
the edge, the session actor and its tasks.

Nothing here imports OpenTelemetry unless tracing is on, so the session actor stays light. Each
process builds its own tracer provider on first use, exporting with the SDK's batch processor
over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (a collector: Jaeger, Tempo, the OTel Collector).
The global provider is left alone: several apps with their own settings may share a process.
The context crosses Ray calls as a W3C `traceparent` string in the call's context dict.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from chatdf.settings import Settings

DEFAULT_ENDPOINT = "http://localhost:4318"
TRACEPARENT = "traceparent"
EXPORT_DELAY_MS = 1000  # spans wait at most this long in a process before export

_tracers: dict[tuple[str, str], Any] = {}
_providers: list[Any] = []
_lock = threading.Lock()


def traces_endpoint(settings: Settings) -> str:
    """OTLP/HTTP's traces URL under the configured base (the standard's rule)."""
    base = settings.otel_exporter_otlp_endpoint.strip() or DEFAULT_ENDPOINT
    return base.rstrip("/") + "/v1/traces"


def tracer(settings: Settings) -> Any:
    """This process's tracer for these settings; None when tracing is off."""
    if not settings.otel_enabled:
        return None
    key = (traces_endpoint(settings), settings.otel_service_name)
    found = _tracers.get(key)
    if found is not None:
        return found
    with _lock:
        if key not in _tracers:
            _tracers[key] = _build(*key)
        return _tracers[key]


def _build(endpoint: str, service: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=endpoint)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS))
    _providers.append(provider)
    return provider.get_tracer("chatdf")


def in_use() -> bool:
    """Whether this process has built a tracer (so a current span may exist to pass on)."""
    return bool(_tracers)


def flush() -> None:
    """Exports every finished span now (at shutdown, so the last ones are not lost)."""
    for provider in list(_providers):
        provider.force_flush()


@contextmanager
def span(
    settings: Settings,
    name: str,
    attributes: Mapping[str, Any] | None = None,
    carrier: Mapping[str, str] | None = None,
    kind: str = "INTERNAL",
) -> Iterator[Any]:
    """A span around a block (the current one's child, or `carrier`'s); a no-op when off."""
    found = tracer(settings)
    if found is None:
        yield None
        return
    from opentelemetry.trace import SpanKind

    context = extract(carrier) if carrier is not None else None
    with found.start_as_current_span(
        name, context=context, kind=SpanKind[kind], attributes=dict(attributes or {})
    ) as current:
        yield current


def inject() -> dict[str, str]:
    """The current span's context as a W3C `traceparent` (empty when none is current)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str]) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(dict(carrier))


@contextmanager
def attached(settings: Settings, carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Makes the caller's span (from another process) current for a block, when tracing is on."""
    if not settings.otel_enabled or not carrier or TRACEPARENT not in carrier:
        yield
        return
    from opentelemetry import context

    token = context.attach(extract(carrier))
    try:
        yield
    finally:
        context.detach(token)
