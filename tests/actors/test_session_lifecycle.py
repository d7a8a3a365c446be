"""The session actor's life: created when a socket connects, reaped once idle, made again on use."""

from __future__ import annotations

import asyncio
import time
import uuid

import ray

from actors.session import actor_name
from chatdf.settings import Settings
from tests.live import LiveServer, wait_until


def actor_alive(user_id: str, settings: Settings) -> bool:
    try:
        ray.get_actor(actor_name(user_id), namespace=settings.ray_namespace)
        return True
    except ValueError:
        return False


def test_actor_is_reaped_when_idle_and_recreated_on_use(
    ray_session: None, settings: Settings
) -> None:
    quick = settings.model_copy(update={"actor_idle_timeout_s": 0.5, "actor_reap_interval_s": 0.2})
    server = LiveServer(quick).start()
    try:
        token, user_id, client = server.login(f"reap-{uuid.uuid4().hex[:8]}@example.com")
        assert not actor_alive(user_id, quick)  # sign-in alone starts nothing
        with server.ws(token):
            assert actor_alive(user_id, quick)  # the socket created it
            time.sleep(1.0)  # longer than the idle timeout: an open socket keeps it
            assert actor_alive(user_id, quick)
        assert wait_until(lambda: not actor_alive(user_id, quick))  # idle: it exits by itself
        assert client.get("/usage").status_code == 200  # next use makes a new one
        assert actor_alive(user_id, quick)
        client.close()
    finally:
        server.stop()


async def test_concurrent_first_calls_all_wait_for_the_budget_to_load(settings: Settings) -> None:
    """The plain actor class: a call racing the first one never sees a half-loaded budget."""
    from actors.session import SessionActor
    from chatdf.db import Database, TokenUsage

    user_id = str(uuid.uuid4())
    db = Database(settings.resolved_database_url)
    db.create_schema()
    with db.session() as s:
        s.add(TokenUsage(user_id=user_id, input_tokens=300, output_tokens=45))
    actor = SessionActor(user_id, settings)
    try:
        _ready, usage = await asyncio.gather(actor.ready(), actor.usage())
        assert usage["tokens_used"] == 345
    finally:
        for task in list(actor._background):
            task.cancel()
        db.dispose()
