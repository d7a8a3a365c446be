"""The edge's Prometheus metrics (one registry per app) and its `GET /metrics` route.

prometheus-client does the text format. Each `create_app` gets its own `CollectorRegistry`, so
several apps in one process (the tests) never register a name twice. Routes are labelled by
their template (`/conversations/{conversation_id}`), never the raw path or the user: the number
of series stays fixed however many users and conversations there are. What runs in the session
actors and tasks (turns, tokens, SQL, loads, refusals) is counted there, with Ray's metrics
(`actors/observe.py`), not here: a turn is seen by every edge holding one of its user's sockets,
or by none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, get_args

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from chatdf.events import ServerEvent
from chatdf.settings import Settings

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
# The route label of answers no route gave: an unknown path (404), or a middleware's answer
# before routing (401 not signed in, 413 body too large, a refused CORS preflight).
UNROUTED = "<unrouted>"
OTHER = "other"  # the event-type label of a type the contract does not list
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

router = APIRouter(tags=["health"])


def event_types() -> tuple[str, ...]:
    """The `type` of every server event of the contract (chatdf/events.py)."""
    union = get_args(ServerEvent)[0]
    return tuple(str(model.model_fields["type"].default) for model in get_args(union))


class EdgeMetrics:
    """The series of one edge app; `attach` links the open-socket gauge to its sockets."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "chatdf_http_requests",
            "HTTP requests answered, by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "chatdf_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.open_sockets = Gauge(
            "chatdf_websocket_open_sockets",
            "WebSockets open on this edge",
            registry=self.registry,
        )
        delivery = Histogram(
            "chatdf_event_delivery_seconds",
            "From an event's publish in the session actor to this edge queueing it for the "
            "user's sockets, by event type",
            ["type"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        # One child per known type, bound once: the per-event cost is a dict lookup + observe.
        self._delivery = {t: delivery.labels(t) for t in (*event_types(), OTHER)}
        self.open_sockets.set_function(lambda: 0)

    def attach(self, sockets: Any) -> None:
        """Reads the open-socket count from the connection manager at each scrape."""
        self.open_sockets.set_function(lambda: float(sockets.open_count()))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(method, route).observe(seconds)

    def observe_delivery(self, batch: Iterable[tuple[float, dict[str, Any]]]) -> None:
        """One batch of actor events reached this edge (called once per batch, not per socket)."""
        now = time.time()
        children = self._delivery
        other = children[OTHER]
        for stamp, event in batch:
            # Stamps are the actor's clock: another node's may run ahead; never negative.
            children.get(event.get("type", OTHER), other).observe(max(0.0, now - stamp))


def route_template(scope: Mapping[str, Any]) -> str:
    """The template of the route that served a request (FastAPI leaves it in the scope)."""
    route = scope.get("route")
    return str(getattr(route, "path", UNROUTED))


def embedded_ray_options(settings: Settings) -> dict[str, Any]:
    """RAY_METRICS_EXPORT_PORT for the embedded Ray (its node's Prometheus port)."""
    port = settings.ray_metrics_export_port
    return {} if port is None else {"_metrics_export_port": port}


def log_ray_metrics_port() -> None:
    """Says where the embedded node exports Ray's metrics (the session actors' and tasks')."""
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    for node in nodes:
        address, port = node.get("NodeManagerAddress"), node.get("MetricsExportPort")
        log.info("Ray metrics (session actors, tasks): http://%s:%s/metrics", address, port)


@router.get(METRICS_PATH, include_in_schema=False)
def metrics(request: Request) -> Response:
    """This edge's metrics in Prometheus' text format (no session needed: counts only)."""
    registry: CollectorRegistry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
