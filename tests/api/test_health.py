"""GET /health over real HTTP: Ray and the database answer; whether a model key is set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from chatdf.settings import Settings
from tests.live import LiveServer


@pytest.fixture
def server(
    request: pytest.FixtureRequest, ray_session: None, settings: Settings
) -> Iterator[LiveServer]:
    live = LiveServer(
        settings.model_copy(update={"gemini_api_key": SecretStr(request.param)})
    ).start()
    yield live
    live.stop()


@pytest.mark.parametrize("server", [""], indirect=True)
def test_health_ok_without_llm_key(server: LiveServer) -> None:
    with server.client() as anon:
        r = anon.get("/health")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ok",
        "ray": True,
        "ray_nodes": 1,
        "database": True,
        "llm_configured": False,
        "warm_session_actors": 0,  # the tests' settings keep none
    }


@pytest.mark.parametrize("server", ["test-key"], indirect=True)
def test_health_reports_llm_configured(server: LiveServer) -> None:
    # A stale or forged credential does not stop health from answering.
    with server.client("not-a-session") as client:
        r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["llm_configured"] is True
