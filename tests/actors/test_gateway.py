"""actors.gateway: session actors' loads and queries go through an edge's hub, on real Ray.

Ray gives a detached actor's tasks only workers of that actor's own tree; without the gateway
every session actor's first load or query started a worker process of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import ray

from actors import gateway
from actors.edges import start_hub
from actors.tasks import load_url, run_sql
from actors.version import deploy_version
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.live import LiveServer

pytestmark = pytest.mark.usefixtures("ray_session")

CSV = b"region,revenue\nn,1.5\ns,2.0\n"


@pytest.fixture
def own_namespace(settings: Settings) -> Iterator[Settings]:
    """Settings in a namespace of their own, so only this test's hubs are gateways there."""
    namespace = f"gateway-{uuid.uuid4().hex[:8]}"
    own = settings.model_copy(update={"ray_namespace": namespace})
    yield own
    gateway._chosen.pop((namespace, deploy_version(own)), None)


def caller_class() -> Any:
    """Stands in for a session actor: detached, and running the real caller code."""

    @ray.remote(num_cpus=0)
    class Caller:
        async def hold_while_running(self, token: str) -> None:  # as SessionActor's
            await gateway.hold(token)

        async def load(self, url: str, settings: Settings) -> str:
            try:
                await load_url(url, settings, "user")
            except Exception as exc:
                return type(exc).__name__
            return "ok"

        async def start_load(self, url: str, settings: Settings) -> None:
            self.loading = asyncio.create_task(load_url(url, settings, "user"))

        async def stop_load(self) -> bool:
            """As a session actor stops a turn or a deleted dataset's load: a task cancel."""
            self.loading.cancel()
            try:
                await self.loading
            except asyncio.CancelledError:
                return True
            return False

        async def sql(self, url: str, settings: Settings) -> Any:
            tables = [{"name": "table1", "url": url, "format": "csv"}]
            return await run_sql("SELECT SUM(revenue) AS total FROM table1", tables, settings)

    return Caller


def _wait_for(condition: Any, what: str, timeout_s: float = 60.0) -> Any:
    """Polls an outside observable (a process table, a server's counter) until it holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _running(title: str) -> list[int]:
    """Pids of Ray workers now running a task named `title` (Ray sets the process title)."""
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].startswith(f"ray::{title}"):
            pids.append(proc.info["pid"])
    return pids


def test_two_session_actors_loads_run_in_one_worker_of_the_edge(
    own_namespace: Settings, data_server: FakeDataServer
) -> None:
    settings = own_namespace
    _, hub = start_hub(settings.ray_namespace, deploy_version(settings), 1)
    ray.get(hub.ready.remote(), timeout=60)
    url = data_server.add("/stall.csv", CSV, stall=True)
    caller = caller_class()
    callers = [
        caller.options(lifetime="detached", namespace=settings.ray_namespace).remote()
        for _ in range(2)
    ]
    workers = []
    try:
        for number, one in enumerate(callers, start=1):
            call = one.load.remote(url, settings)
            _wait_for(lambda n=number: data_server.requests["/stall.csv"] >= n, "the request")
            [worker] = _wait_for(lambda: _running("load_dataset"), "a load worker")
            workers.append(worker)
            data_server.release.set()  # the stalled fetch ends; the load fails, as expected
            ray.get(call, timeout=60)
            data_server.release = threading.Event()
        # Without the gateway the second actor could not have the first one's worker.
        assert workers[0] == workers[1]
    finally:
        data_server.release.set()
        for one in callers:
            ray.kill(one)
        ray.kill(hub)


def test_a_dead_gateway_costs_one_retry_on_another(
    own_namespace: Settings, data_server: FakeDataServer
) -> None:
    settings = own_namespace
    namespace = settings.ray_namespace
    _, dead = start_hub(namespace, deploy_version(settings), 1)
    _, live = start_hub(namespace, deploy_version(settings), 1)
    ray.get([dead.ready.remote(), live.ready.remote()], timeout=60)
    ray.kill(dead)
    url = data_server.add("/table.csv", CSV)
    key = (namespace, deploy_version(settings))
    gateway._chosen[key] = dead  # as if this process had picked it before its edge died

    async def query() -> dict[str, Any]:
        return await run_sql(
            "SELECT SUM(revenue) AS total FROM table1",
            [{"name": "table1", "url": url, "format": "csv"}],
            settings,
        )

    try:
        result = asyncio.run(query())
        assert result["rows"] == [[3.5]]
        chosen = gateway._chosen[key]
        assert chosen._actor_id == live._actor_id
    finally:
        ray.kill(live)


@contextlib.contextmanager
def stalled_load(settings: Settings, data_server: FakeDataServer) -> Iterator[tuple[Any, int]]:
    """A session-actor stand-in whose load, through a gateway, hangs on its download: yields
    the caller and the pid of the worker running the load."""
    _, hub = start_hub(settings.ray_namespace, deploy_version(settings), 1)
    ray.get(hub.ready.remote(), timeout=60)
    url = data_server.add("/stall.csv", CSV, stall=True)
    one = caller_class().options(lifetime="detached", namespace=settings.ray_namespace).remote()
    try:
        ray.get(one.start_load.remote(url, settings), timeout=60)
        _wait_for(lambda: data_server.requests["/stall.csv"] >= 1, "the request")
        [worker] = _wait_for(lambda: _running("load_dataset"), "a load worker")
        yield one, worker
    finally:
        data_server.release.set()
        ray.kill(one)
        ray.kill(hub)


def test_a_cancelled_call_stops_the_task_behind_the_gateway(
    own_namespace: Settings, data_server: FakeDataServer
) -> None:
    """A stopped turn (or a deleted dataset) cancels its call; the gateway kills the task."""
    with stalled_load(own_namespace, data_server) as (caller, worker):
        assert ray.get(caller.stop_load.remote(), timeout=60)
        psutil.Process(worker).wait(timeout=60)  # force-cancelled: the worker process exits


def test_a_dead_callers_task_is_stopped_by_the_gateway(
    own_namespace: Settings, data_server: FakeDataServer
) -> None:
    """A session actor killed mid-load: its task (owned by the gateway) does not run on."""
    with stalled_load(own_namespace, data_server) as (caller, worker):
        ray.kill(caller)
        psutil.Process(worker).wait(timeout=60)


def test_a_gateway_is_a_hub_of_the_callers_own_deploy(own_namespace: Settings) -> None:
    """A hub of another deploy would run its own code with this actor's arguments (or, older,
    lack the gateway's methods): never picked; with no hub of its own the actor goes direct."""
    namespace = own_namespace.ray_namespace
    _, other = start_hub(namespace, "0ther0version", 2)
    _, own = start_hub(namespace, "0wn0version", 1)
    try:
        ray.get([other.ready.remote(), own.ready.remote()], timeout=60)
        for _ in range(5):  # the pick is random among the candidates
            assert gateway._pick(namespace, "0wn0version")._actor_id == own._actor_id
        with pytest.raises(gateway.NoGateway):
            gateway._pick(namespace, "n0hub0version")
    finally:
        ray.kill(other)
        ray.kill(own)


def test_the_service_runs_a_users_load_and_query_through_its_edges_gateway(
    live: LiveServer, data_server: FakeDataServer
) -> None:
    """End to end: REST calls, the user's session actor, the edge's hub as gateway."""
    from tests.api.test_datasets import csv_bytes, signed_in, wait_status

    hub = live.manager.following._hub
    before = ray.get(hub.gateway_stats.remote(), timeout=60)
    client, conv = signed_in(live)
    url = data_server.add("/gw.csv", csv_bytes())
    dataset = client.post(f"/conversations/{conv}/datasets", json={"url": url}).json()
    assert wait_status(client, conv, dataset["dataset_id"])["status"] == "ready"
    reply = client.post(f"/conversations/{conv}/query", json={"sql": "SELECT * FROM table1"})
    assert reply.status_code == 200, reply.text
    after = ray.get(hub.gateway_stats.remote(), timeout=60)
    assert after["loads"] == before["loads"] + 1
    assert after["queries"] == before["queries"] + 1
    client.close()


def test_loads_beyond_the_clusters_slots_wait_in_the_gateway_not_in_rays_queue(
    own_namespace: Settings, data_server: FakeDataServer
) -> None:
    """A task queued in Ray makes the raylet start spare workers for the backlog (docs/sql.md,
    "Admission"); the gateway submits only what the slots can run. Here each load takes half
    the cluster's load slots: two run, the third waits in the gateway until one ends."""
    from actors.tasks import LOAD_SLOT

    settings = own_namespace
    _, hub = start_hub(settings.ray_namespace, deploy_version(settings), 1)
    ray.get(hub.ready.remote(), timeout=60)
    url = data_server.add("/stall.csv", CSV, stall=True)
    half = ray.cluster_resources()[LOAD_SLOT] / 2  # type: ignore[no-untyped-call]
    options = {"num_cpus": 0, "resources": {LOAD_SLOT: half}}
    args = (url, settings.for_tasks(), "user")
    try:
        calls = [hub.load_dataset.remote(options, args, 60.0, None) for _ in range(3)]
        _wait_for(lambda: data_server.requests["/stall.csv"] >= 2, "two loads running")
        stats = _wait_for(
            lambda: (s := ray.get(hub.gateway_stats.remote(), timeout=60))["waiting"] == 1 and s,
            "the third load queued in the gateway",
        )
        assert stats["loads"] == 2  # submitted to Ray: only what the slots run
        assert data_server.requests["/stall.csv"] == 2
        data_server.release.set()
        results = ray.get(calls, timeout=60)
        assert [r["kind"] for r in results] == ["failed"] * 3  # the stalled fetch ends in error
        assert data_server.requests["/stall.csv"] == 3
        assert ray.get(hub.gateway_stats.remote(), timeout=60)["waiting"] == 0
    finally:
        data_server.release.set()
        ray.kill(hub)
