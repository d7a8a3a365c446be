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
        "model_provider": "gemini",
        "model": "gemini-2.5-flash",
    }


@pytest.mark.parametrize("server", ["test-key"], indirect=True)
def test_health_reports_llm_configured(server: LiveServer) -> None:
    # A stale or forged credential does not stop health from answering.
    with server.client("not-a-session") as client:
        r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["llm_configured"] is True


@pytest.fixture
def openai_server(ray_session: None, settings: Settings) -> Iterator[LiveServer]:
    local = settings.model_copy(
        update={
            "model_provider": "openai",
            "model_base_url": "http://127.0.0.1:11434/v1",
            "model_name": "qwen2.5:7b",
        }
    )
    live = LiveServer(local).start()
    yield live
    live.stop()


def test_health_names_the_openai_provider_and_model(openai_server: LiveServer) -> None:
    with openai_server.client() as anon:
        body = anon.get("/health").json()
    assert body["llm_configured"] is True  # a local server needs no key
    assert (body["model_provider"], body["model"]) == ("openai", "qwen2.5:7b")
    assert "11434" not in str(body)  # where the model runs is not told to anyone asking
