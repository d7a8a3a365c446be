"""Shared fixtures: one real local Ray per test session, settings on a fresh SQLite file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from api import embedded_ray
from api.app import fork_preload, node_slots, node_system_config
from chatdf.settings import Settings
from tests.fakes.fake_data_server import data_server
from tests.fakes.fake_gemini import fake_gemini, gemini_settings
from tests.live import LiveServer

__all__ = ["data_server", "fake_gemini", "gemini_settings"]

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A single real Ray instance shared by every test that needs Ray (init costs ~3-4 s),
    started as the edge starts its embedded Ray: loopback only, token authentication on."""
    if not ray.is_initialized():
        embedded_ray.start(
            # Its edges run either provider: no model SDK preloaded (each test checks that its
            # actors import only their own provider's).
            fork_preload=fork_preload(Settings(), model_sdk=False),
            num_cpus=4,
            # Session slots past what the suite ever holds at once: the cap has its own test
            # (tests/test_session_slots.py), with its own `chatdf serve` of one slot.
            resources=node_slots(Settings(session_actors_per_node=10_000)),
            # Ray exports metrics every 10 s by default; the metrics tests wait for them.
            _system_config={**node_system_config(Settings()), "metrics_report_interval_ms": 500},
            include_dashboard=False,
            namespace="chatdf-tests",
            log_to_driver=False,
            configure_logging=False,
        )
    yield
    embedded_ray.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on a fresh SQLite file; loopback dataset hosts allowed (the fakes live there)."""
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'chatdf.db'}",
        data_dir=str(tmp_path),
        dataset_allow_private_hosts=True,
        ray_namespace="chatdf-tests",
        llm_backoff_s=0.01,
        # No warm actors unless a test asks: each is a process, and most tests start edges.
        warm_session_actors=0,
        warm_task_workers=0,
    )


@pytest.fixture
def live(ray_session: None, settings: Settings) -> Iterator[LiveServer]:
    """The real edge under uvicorn on a loopback port, on this test's SQLite file."""

    server = LiveServer(settings).start()
    yield server
    server.stop()


@pytest.fixture
def chat_live(ray_session: None, gemini_settings: Settings) -> Iterator[LiveServer]:
    """The live edge with the model pointed at the scripted loopback fake of Gemini."""
    server = LiveServer(gemini_settings).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _session_actors_end_with_the_test() -> Iterator[None]:
    """Kill the session actors a test left behind.

    They are detached and would otherwise live until their idle timeout (2 min): by the end of
    the suite, hundreds of idle actor processes (~50 MB and a little CPU each) on a 2-core CI
    machine. Each test makes its own users, so none of them is needed by a later test.
    """
    yield
    if not ray.is_initialized():
        return
    for name in ray.util.list_named_actors():
        if not name.startswith("session:"):
            continue
        with contextlib.suppress(ValueError):  # it reaped itself meanwhile
            ray.kill(ray.get_actor(name), no_restart=True)
