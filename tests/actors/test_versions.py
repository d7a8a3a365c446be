"""Deploy versions (issue 11, "a live actor keeps the settings and code it started with"): what
makes a new version, and how two versions are ordered across the cluster."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import ray

from actors import version
from actors.edges import start_hub
from chatdf.settings import Settings
from tests.live import wait_until


def test_settings_the_actor_uses_make_a_new_version(settings: Settings) -> None:
    before = version.deploy_version(settings)
    assert version.deploy_version(settings.model_copy()) == before
    assert version.deploy_version(settings.model_copy(update={"turn_timeout_s": 7.0})) != before
    assert version.deploy_version(settings.model_copy(update={"gemini_model": "other"})) != before


def test_edge_only_settings_do_not(settings: Settings) -> None:
    """Edges of one deploy differ in address and port: they must not hand users to each other."""
    other_edge = settings.model_copy(update={"port": 9123, "host": "0.0.0.0", "public_url": "x"})
    assert version.deploy_version(other_edge) == version.deploy_version(settings)


def test_a_new_key_is_a_new_version_without_the_key_in_it(settings: Settings) -> None:
    from pydantic import SecretStr

    rotated = settings.model_copy(update={"gemini_api_key": SecretStr("sk-rotated-secret")})
    assert version.deploy_version(rotated) != version.deploy_version(settings)
    assert "rotated" not in version.deploy_version(rotated)


def test_the_version_is_in_the_actor_name() -> None:
    name = version.actor_name("abc123", "u" * 32)
    assert name.startswith("session:")
    assert version.version_of(name) == "abc123"
    assert version.version_of("session:" + "u" * 32) == ""  # named before versions existed


def _hub(settings: Settings, deploy: str) -> Any:
    number = version.register(deploy, settings.ray_namespace)
    _name, hub = start_hub(settings.ray_namespace, deploy, number)
    ray.get(hub.ready.remote())
    return hub


def test_the_deploy_of_the_edge_that_started_last_and_runs_is_current(
    ray_session: None, settings: Settings
) -> None:
    """Ranks come from the live edges' hubs: a new deploy's edge outranks the old ones still
    running beside it; a rollback's edge (the old version again) outranks both; a version
    whose edges are all gone ranks below any that runs."""
    ns = settings.ray_namespace
    old, new = f"old{uuid.uuid4().hex[:8]}", f"new{uuid.uuid4().hex[:8]}"
    old_hub, new_hub = _hub(settings, old), _hub(settings, new)
    ranks = version.live_ranks(ns)
    assert 0 < ranks[old] < ranks[new]
    rollback_hub = _hub(settings, old)
    assert version.live_ranks(ns)[old] > ranks[new]
    for hub in (old_hub, rollback_hub):
        ray.kill(hub)
    assert wait_until(lambda: old not in version.live_ranks(ns))
    ray.kill(new_hub)


def test_edges_starting_at_once_never_share_a_number(ray_session: None, settings: Settings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    deploy, ns = f"same{uuid.uuid4().hex[:8]}", settings.ray_namespace
    with ThreadPoolExecutor(8) as pool:
        numbers = list(pool.map(lambda _: version.register(deploy, ns), range(16)))
    assert len(set(numbers)) == 16


@pytest.mark.parametrize("name", ["session:a:b:c", "edge:x", "", "session:"])
def test_names_that_are_not_versioned_have_no_version(name: str) -> None:
    assert version.version_of(name) == ""
