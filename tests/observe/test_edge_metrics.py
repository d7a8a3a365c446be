"""The edge's `/metrics`: Prometheus text from prometheus-client, one registry per app, routes by
template, open sockets, event delivery latency; and the X-Request-ID every answer carries."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.live import LiveServer, wait_until

CONV_ROUTE = "/conversations/{conversation_id}"


def scrape(server: LiveServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the edge's /metrics (fetched with no session), by name and labels."""
    r = httpx.get(f"{server.url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_are_counted_by_route_template_and_status_never_by_id(live: LiveServer) -> None:
    token, user_id, client = live.login(f"m-{uuid.uuid4().hex[:8]}@example.com")
    with client:
        conv = client.post("/conversations").json()["id"]
        for _ in range(2):
            assert client.get(f"/conversations/{conv}").status_code == 200
        assert client.get(f"/conversations/{uuid.uuid4()}").status_code == 404
        assert client.get("/no/such/route").status_code == 404
    assert httpx.get(f"{live.url}/conversations").status_code == 401  # no session
    samples = scrape(live)
    total = "chatdf_http_requests_total"
    assert value(samples, total, method="GET", route=CONV_ROUTE, status="200") == 2
    assert value(samples, total, method="GET", route=CONV_ROUTE, status="404") == 1
    assert value(samples, total, method="POST", route="/conversations", status="201") == 1
    assert value(samples, total, method="GET", route="<unrouted>", status="401") == 1
    assert value(samples, total, method="GET", route="<unrouted>", status="404") == 1
    seconds = "chatdf_http_request_duration_seconds_count"
    assert value(samples, seconds, method="GET", route=CONV_ROUTE) == 3
    text = httpx.get(f"{live.url}/metrics").text
    for secret in (conv, user_id, token, "/no/such/route"):
        assert secret not in text


def test_open_sockets_and_event_delivery_latency(
    live: LiveServer, data_server: FakeDataServer
) -> None:
    token, _, client = live.login(f"m-{uuid.uuid4().hex[:8]}@example.com")
    assert value(scrape(live), "chatdf_websocket_open_sockets") == 0
    with client, live.ws(token) as ws, live.ws(token):
        assert wait_until(lambda: value(scrape(live), "chatdf_websocket_open_sockets") == 2)
        conv = client.post("/conversations").json()["id"]
        url = data_server.add("/m.csv", b"a,b\n1,2\n")
        assert client.post(f"/conversations/{conv}/datasets", json={"url": url}).is_success
        ws.receive_until("dataset_loaded", timeout=60)
        samples = scrape(live)
        count = "chatdf_event_delivery_seconds_count"
        assert value(samples, count, type="dataset_loading") == 1
        assert value(samples, count, type="dataset_loaded") == 1
        total = value(samples, "chatdf_event_delivery_seconds_sum", type="dataset_loaded")
        assert 0 <= total < 30
    assert wait_until(lambda: value(scrape(live), "chatdf_websocket_open_sockets") == 0)


def test_each_app_has_its_own_registry(settings: Settings) -> None:
    """create_app runs many times in one process (tests, several edges): no name collides."""
    first, second = create_app(settings), create_app(settings)
    assert first.state.metrics.registry is not second.state.metrics.registry
    first.state.metrics.observe_request("GET", "/health", 200, 0.01)
    names = {m.name for m in second.state.metrics.registry.collect()}
    assert "chatdf_http_requests" in names
    assert not list(second.state.metrics.requests.collect())[0].samples


@pytest.fixture
def no_metrics_live(ray_session: None, settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(settings.model_copy(update={"metrics_enabled": False})).start()
    yield server
    server.stop()


def test_metrics_enabled_false_removes_the_route(no_metrics_live: LiveServer) -> None:
    r = httpx.get(f"{no_metrics_live.url}/metrics")
    assert r.status_code == 404
    assert set(r.json()) == {"error", "details"}


def test_request_id_is_the_clients_when_sane_else_new(live: LiveServer) -> None:
    """Every answer, a 401 included, carries X-Request-ID; a client's odd value is replaced."""
    given = httpx.get(f"{live.url}/health", headers={"X-Request-ID": "lb-1234.abc"})
    assert given.headers["x-request-id"] == "lb-1234.abc"
    for odd in ("has spaces", "x" * 200, "<script>"):
        r = httpx.get(f"{live.url}/conversations", headers={"X-Request-ID": odd})
        assert r.status_code == 401
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), r.headers
    fresh = {httpx.get(f"{live.url}/health").headers["x-request-id"] for _ in range(2)}
    assert len(fresh) == 2
