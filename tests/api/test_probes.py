"""The liveness and readiness probes over real HTTP, and the readiness cache on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.health import Readiness
from chatdf.db import Database
from chatdf.settings import Settings
from tests.live import LiveServer


@pytest.fixture
def server(ray_session: None, settings: Settings) -> Iterator[LiveServer]:
    live = LiveServer(settings.model_copy(update={"health_ready_cache_s": 60.0})).start()
    yield live
    live.stop()


def test_live_answers_without_a_session(server: LiveServer) -> None:
    with server.client() as anon:
        r = anon.get("/health/live")
    assert r.status_code == 200
    assert r.json() == {"status": "alive"}


def test_ready_checks_database_and_ray_once_per_window(server: LiveServer) -> None:
    with server.client("not-a-session") as client:  # a stale credential does not matter
        first = client.get("/health/ready")
        again = [client.get("/health/ready") for _ in range(5)]
    assert first.status_code == 200
    body = first.json()
    assert {k: body[k] for k in ("status", "database", "ray")} == {
        "status": "ready",
        "database": True,
        "ray": True,
    }
    # Within the window every probe gets the same answer, from one check.
    assert {r.json()["checked_at"] for r in again} == {body["checked_at"]}
    assert server.app.state.readiness.checks == 1


def test_health_keeps_its_contract_answer(server: LiveServer) -> None:
    with server.client() as anon:
        body = anon.get("/health").json()
    assert set(body) == {
        "status",
        "ray",
        "ray_nodes",
        "database",
        "llm_configured",
        "model_provider",
        "model",
        "warm_session_actors",
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_readiness_is_checked_again_after_the_window(ray_session: None, tmp_path: Path) -> None:
    clock = FakeClock()
    readiness = Readiness(5.0, clock=clock)
    db = Database(f"sqlite:///{tmp_path / 'ready.db'}")

    async def probes() -> list[dict[str, object]]:
        answers = list(await asyncio.gather(*(readiness.answer(db) for _ in range(10))))
        clock.now += 4.9
        answers.append(await readiness.answer(db))
        clock.now += 0.2
        answers.append(await readiness.answer(db))
        return answers

    answers = asyncio.run(probes())
    assert readiness.checks == 2  # ten concurrent probes and one inside the window share one
    assert all(a["status"] == "ready" for a in answers)
    db.dispose()


def test_ready_is_503_while_the_database_does_not_answer(ray_session: None) -> None:
    readiness = Readiness(5.0)
    db = Database("postgresql+psycopg://chatdf@127.0.0.1:1/chatdf", pool_size=1, max_overflow=0)
    answer = asyncio.run(readiness.answer(db))
    assert {k: answer[k] for k in ("status", "database", "ray")} == {
        "status": "unready",
        "database": False,
        "ray": True,
    }
    db.dispose()
