"""The session actor's life: created when a socket connects, reaped once idle, made again on use."""

from __future__ import annotations

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
