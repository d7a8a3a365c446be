"""The session actor's metrics go out through Ray's own metrics export (ray.util.metrics): a
turn with SQL, a failed query and a budget refusal, read back from the node's metrics port."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from actors.session_ray import get_session_actor
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer, wait_until
from tests.observe.scenario import run_turn

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def node_metrics(worker_id: str) -> Samples:
    """The samples one worker process reported to this node's Ray metrics export."""
    node = ray._private.worker.global_worker.node
    assert node is not None  # the tests' Ray runs in this process
    port = node.metrics_export_port
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("ray_chatdf_") and s.labels.get("WorkerId") == worker_id:
                labels = {k: v for k, v in s.labels.items() if k[0].islower()}
                labels.pop("otel_scope_name", None)
                labels.pop("otel_scope_schema_url", None)
                labels.pop("otel_scope_version", None)
                out[(s.name, frozenset(labels.items()))] = s.value
    return out


@pytest.fixture
def small_budget_live(ray_session: None, gemini_settings: Settings) -> Iterator[LiveServer]:
    """Chat with a 100-token daily budget: one turn of the scenario spends it."""
    server = LiveServer(gemini_settings.model_copy(update={"token_limit": 100})).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_turn_sql_load_and_refusal_metrics_reach_rays_export(
    small_budget_live: LiveServer, fake_gemini: FakeGemini, data_server: FakeDataServer
) -> None:
    live = small_budget_live
    turn = run_turn(live, fake_gemini, data_server, usage=(100, 50))  # 20+100 in, 8+50 out
    with live.client(turn.token) as client:
        failed = client.post(
            f"/conversations/{turn.conversation_id}/query", json={"sql": "SELECT nope FROM table1"}
        )
        assert failed.status_code == 400, failed.text
        refused = client.post(
            f"/conversations/{turn.conversation_id}/messages", json={"content": "Again?"}
        )
        assert refused.status_code == 429, refused.text
    actor = get_session_actor(turn.user_id, live.settings)
    worker_id = ray.get(
        actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_worker_id())
    )

    def series(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    expected = {
        ("ray_chatdf_turn_duration_seconds_count", (("outcome", "complete"),)): 1,
        (
            "ray_chatdf_model_tokens_total",
            (("direction", "in"), ("model", "gemini-2.5-flash")),
        ): 120,
        (
            "ray_chatdf_model_tokens_total",
            (("direction", "out"), ("model", "gemini-2.5-flash")),
        ): 58,
        ("ray_chatdf_sql_duration_seconds_count", (("outcome", "ok"),)): 1,
        ("ray_chatdf_sql_duration_seconds_count", (("outcome", "error"),)): 1,
        ("ray_chatdf_dataset_load_duration_seconds_count", (("outcome", "ok"),)): 1,
        ("ray_chatdf_budget_refusals_total", (("reason", "exceeded"),)): 1,
    }
    samples: Samples = {}

    def all_reported() -> bool:
        nonlocal samples
        samples = node_metrics(worker_id)
        return all(series(name, **dict(labels)) == n for (name, labels), n in expected.items())

    assert wait_until(all_reported, limit_s=60), samples
    for phase in ("queued", "generating", "executing", "formatting"):
        assert series("ray_chatdf_turn_phase_seconds_count", phase=phase) >= 1, phase
    failures = [k for k in samples if k[0] == "ray_chatdf_sql_failures_total"]
    assert failures == [("ray_chatdf_sql_failures_total", frozenset({("reason", "SqlFailed")}))]
    assert series("ray_chatdf_turn_duration_seconds_sum", outcome="complete") > 0
