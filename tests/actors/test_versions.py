"""Deploy versions (issue 11, "a live actor keeps the settings and code it started with"): what
makes a new version, and how two versions are ordered across the cluster."""

from __future__ import annotations

import uuid

import pytest

from actors import version
from chatdf.settings import Settings


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


def test_the_version_of_the_edge_that_started_last_is_the_current_one(
    ray_session: None, settings: Settings
) -> None:
    """An edge ranks its version by its own start: a new deploy's edges outrank the old ones
    still running beside them, and a rollback's edges (the old version again) outrank both."""
    ns = settings.ray_namespace
    old, new = f"old-{uuid.uuid4().hex[:8]}", f"new-{uuid.uuid4().hex[:8]}"
    old_rank = version.register(old, ns)
    new_rank = version.register(new, ns)
    assert old_rank < new_rank
    assert (version.rank(old, ns), version.rank(new, ns)) == (old_rank, new_rank)
    rolled_back = version.register(old, ns)
    assert version.rank(old, ns) == rolled_back > new_rank
    assert version.rank("", ns) == 0.0  # an actor from before versions: older than any
    assert version.rank(f"never-{uuid.uuid4().hex[:8]}", ns) == 0.0


@pytest.mark.parametrize("name", ["session:a:b:c", "edge:x", "", "session:"])
def test_names_that_are_not_versioned_have_no_version(name: str) -> None:
    assert version.version_of(name) == ""
