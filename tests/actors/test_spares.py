"""Warm session starts (issue 8, item 4): started, unbound actors that a user's first call binds,
the directory that keeps one actor per user, and spares that die with their edge."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import ray

from actors import directory
from actors.edges import start_hub
from actors.session_ray import start_unbound_actor
from chatdf.db import Database
from chatdf.settings import Settings
from tests.live import LiveServer, session_alive, wait_until


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The usual settings, on a database with its schema (bound actors read the budget)."""
    Database(settings.resolved_database_url).create_schema()
    return settings


def client_health(server: LiveServer) -> dict[str, object]:
    with server.client() as anon:
        body: dict[str, object] = anon.get("/health").json()
    return body


def named_alive(name: str, settings: Settings) -> bool:
    try:
        ray.get_actor(name, namespace=settings.ray_namespace)
        return True
    except ValueError:
        return False


def test_a_first_call_binds_a_warm_spare_and_the_pool_refills(
    ray_session: None, settings: Settings
) -> None:
    """The user's first call is served by the spare started before it (no process start on the
    request path), and the edge starts the spare's replacement behind it."""
    warm = settings.model_copy(update={"warm_session_actors": 1})
    server = LiveServer(warm).start()
    try:
        pool = server.app.state.sessions.pool
        server.call(pool.wait_filled(), timeout=60)
        assert len(pool) == 1
        assert client_health(server)["warm_session_actors"] == 1
        (spare_name, _handle) = pool._ready[0]
        token, user_id, client = server.login(f"warm-{uuid.uuid4().hex[:8]}@example.com")
        assert client.get("/usage").status_code == 200
        bound = directory.find_session_actor(user_id, warm.ray_namespace)
        assert ray.get(bound.check_health.remote())["user_id"] == user_id
        assert directory.find_session_actor(user_id, warm.ray_namespace)._actor_id == (
            ray.get_actor(spare_name, namespace=warm.ray_namespace)._actor_id
        )
        server.call(pool.wait_filled(), timeout=60)
        assert len(pool) == 1 and pool._ready[0][0] != spare_name  # a new spare, unbound
        assert ray.get(pool._ready[0][1].check_health.remote())["user_id"] is None
        client.close()
    finally:
        server.stop()


def test_a_call_right_after_start_waits_for_the_spare_on_its_way(
    ray_session: None, settings: Settings
) -> None:
    """Right after an edge starts, its spares are still starting: a first call takes the one on
    its way (started earlier, so ready sooner) instead of queueing a process start of its own
    behind it."""
    warm = settings.model_copy(update={"warm_session_actors": 1})
    server = LiveServer(warm).start()
    try:
        _token, user_id, client = server.login(f"early-{uuid.uuid4().hex[:8]}@example.com")
        assert client.get("/usage", timeout=60).status_code == 200
        bound = directory.find_session_actor(user_id, warm.ray_namespace)
        assert ray.get(bound.check_health.remote())["warm_start"] is True
        client.close()
    finally:
        server.stop()


def test_two_actors_racing_for_one_user_agree_on_one(ray_session: None, settings: Settings) -> None:
    """Two spares bound to the same user at once (two edges' first calls): one wins, both
    answer with the winner's name, and the loser stays unbound for someone else."""
    user_id = f"race-{uuid.uuid4().hex}"
    (name_a, a), (name_b, b) = start_unbound_actor(settings), start_unbound_actor(settings)
    ray.get([a.warm.remote(), b.warm.remote()])
    winners = ray.get([a.bind.remote(user_id), b.bind.remote(user_id)])
    assert winners[0] == winners[1] and winners[0] in (name_a, name_b)
    loser = b if winners[0] == name_a else a
    assert ray.get(loser.check_health.remote())["user_id"] is None
    assert session_alive(user_id, settings)
    other = f"other-{uuid.uuid4().hex}"
    assert ray.get(loser.bind.remote(other)) != winners[0]  # reusable for another user


def test_a_dead_binding_is_replaced_and_its_key_dropped(
    ray_session: None, settings: Settings
) -> None:
    """An actor that died without giving up its binding (killed) leaves a stale key: the next
    bind takes the following generation and removes the stale one."""
    user_id = f"stale-{uuid.uuid4().hex}"
    name_a, a = start_unbound_actor(settings)
    assert ray.get(a.bind.remote(user_id)) == name_a
    ray.kill(a, no_restart=True)
    assert wait_until(lambda: not session_alive(user_id, settings))
    name_b, b = start_unbound_actor(settings)
    assert ray.get(b.bind.remote(user_id)) == name_b
    assert directory._generations(user_id, settings.ray_namespace) == [1]
    assert (
        ray.get(
            directory.find_session_actor(user_id, settings.ray_namespace).check_health.remote()
        )["user_id"]
        == user_id
    )


def test_an_idle_actor_gives_up_its_binding_as_it_exits(
    ray_session: None, settings: Settings
) -> None:
    quick = settings.model_copy(update={"actor_idle_timeout_s": 0.3, "actor_reap_interval_s": 0.1})
    user_id = f"idle-{uuid.uuid4().hex}"
    name, handle = start_unbound_actor(quick)
    assert ray.get(handle.bind.remote(user_id)) == name
    assert wait_until(lambda: not named_alive(name, quick))
    assert directory._generations(user_id, quick.ray_namespace) == []


def test_an_unbound_spare_exits_with_its_edge(ray_session: None, settings: Settings) -> None:
    """Spares are detached (a bound one outlives its edge), so an unbound one must notice its
    edge's death itself, through the edge's hub, or a crashed edge would leak processes."""
    hub_name, hub = start_hub(settings.ray_namespace)
    ray.get(hub.ready.remote())
    name, spare = start_unbound_actor(settings, edge=hub_name)
    ray.get(spare.warm.remote())
    bound_name, bound = start_unbound_actor(settings, edge=hub_name)
    ray.get(bound.warm.remote())
    ray.get(bound.bind.remote(f"kept-{uuid.uuid4().hex}"))
    ray.kill(hub, no_restart=True)
    assert wait_until(lambda: not named_alive(name, settings))
    assert named_alive(bound_name, settings)  # a bound one is the user's, not the edge's


def test_a_binding_after_a_handover_never_reuses_a_retiring_actors_number(
    ray_session: None, settings: Settings
) -> None:
    """A is replaced by B (A retiring at generation 0, B at 1); B dies while A still drains.
    The next actor must not take generation 0 again: A's exit would then remove its key."""
    ns, user_id = settings.ray_namespace, f"gen-{uuid.uuid4().hex}"
    name_a, a = start_unbound_actor(settings)
    assert directory.bind(user_id, name_a, ns) == (name_a, 0)
    name_b, b = start_unbound_actor(settings)
    assert directory.bind(user_id, name_b, ns, replacing=name_a) == (name_b, 1)
    assert directory._generations(user_id, ns, directory.RETIRING_PREFIX) == [0]
    ray.kill(b, no_restart=True)
    assert wait_until(lambda: not named_alive(name_b, settings))
    name_c, c = start_unbound_actor(settings)
    assert directory.bind(user_id, name_c, ns) == (name_c, 2)
    directory.unbind(user_id, 0, ns, name_a)  # A exits: only its own key goes
    assert directory.find_bound(user_id, ns)[0] == name_c
    directory.unbind(user_id, 2, ns, name_a)  # a key naming another actor is left alone
    assert directory.find_bound(user_id, ns)[0] == name_c
    for handle in (a, c):
        ray.kill(handle, no_restart=True)


def test_a_burst_of_session_actors_starts_in_turn_through_the_start_gate(
    ray_session: None, settings: Settings
) -> None:
    """Started all at once, a burst's actors share the CPU and are all ready only at the end;
    the gate starts ACTOR_START_CONCURRENCY at a time, in order, each through its warm-up."""
    import asyncio

    from actors.spares import start_gate, start_warm

    one = settings.model_copy(update={"actor_start_concurrency": 1})

    async def burst() -> tuple[list[tuple[int, int]], list[tuple[str, Any]]]:
        gate = start_gate(one)
        starts = [asyncio.create_task(start_warm(one)) for _ in range(3)]
        await asyncio.sleep(0)  # each task reaches the gate
        seen = [(gate.running, gate.waiting)]
        pending = set(starts)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            seen.append((gate.running, gate.waiting))
        return seen, [t.result() for t in starts]

    seen, started = asyncio.run(burst())
    try:
        assert seen[0] == (1, 2)  # one starting, two waiting their turn
        assert all(running <= 1 for running, _ in seen)
        assert seen[-1] == (0, 0)
        for _name, handle in started:
            health = ray.get(handle.check_health.remote(), timeout=60)
            assert health["user_id"] is None  # started and warmed, bound to nobody
    finally:
        for _name, handle in started:
            ray.kill(handle)
