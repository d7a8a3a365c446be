"""Edge hubs: one small named Ray actor per edge process, through which a starting session actor
wakes every edge (so those holding the user's sockets subscribe) and learns when an edge died."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from actors import version
from actors.gateway import Caller, TaskGateway

log = logging.getLogger(__name__)

HUB_PREFIX = version.HUB_PREFIX
WATCH_RENEW_S = 300.0  # watch calls return after this: those of vanished callers do not pile up
MAX_WAKE_BATCH = 1000


class EdgeHubActor(TaskGateway):
    """Plain class behind one edge's hub; `hub_class()` wraps it for Ray. It is also the edge's
    task gateway (`actors.gateway`): session actors submit loads and queries through it.

    The edge streams `wakeups()` for its whole life. A session actor that starts calls `notify`
    on every hub; the edge then subscribes for that user if it holds sockets of the user. The hub
    is owned by its edge process (not detached), so it dies with it, even on kill -9: a session
    actor holding a `watch` call learns of that death from the call's failure.
    """

    def __init__(self) -> None:
        super().__init__()
        self._woken: asyncio.Queue[str] | None = None

    def _queue(self) -> asyncio.Queue[str]:
        if self._woken is None:  # created on the actor's event loop, not in __init__
            self._woken = asyncio.Queue()
        return self._woken

    async def ready(self) -> bool:
        return True

    async def notify(self, user_id: str) -> None:
        """A session actor for `user_id` has started."""
        self._queue().put_nowait(user_id)

    async def wakeups(self) -> AsyncIterator[list[str]]:
        """Yields an empty batch once streaming, then batches of woken user ids."""
        queue = self._queue()
        yield []
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < MAX_WAKE_BATCH:
                batch.append(queue.get_nowait())
            yield batch

    async def watch(self, renew_s: float = WATCH_RENEW_S) -> bool:
        """Returns after `renew_s` while the hub lives; fails (actor died) when its edge dies."""
        await asyncio.sleep(renew_s)
        return True


def hub_name(edge_id: str, deploy: str = "", number: int = 0) -> str:
    """`edge:<version>:<start number>:<id>` (actors/version.py ranks deploys by these), or
    `edge:<id>` for a hub that names no deploy."""
    if deploy:
        return version.hub_name(deploy, number, edge_id)
    return f"{HUB_PREFIX}{edge_id}"


_remote_class: Any = None


def hub_class() -> Any:
    """The Ray shell: no CPU slot; `watch` calls and relayed tasks in their own groups, so that
    neither ever queues a wake-up."""
    global _remote_class
    if _remote_class is None:
        import ray

        class _Hub(EdgeHubActor):
            @ray.method(concurrency_group="watch")
            async def watch(  # type: ignore[override]  # Ray's stubs retype the method
                self, renew_s: float = WATCH_RENEW_S
            ) -> bool:
                return await super().watch(renew_s)

            @ray.method(concurrency_group="tasks")
            async def run_sql(  # type: ignore[override]
                self,
                options: dict[str, Any],
                args: tuple[Any, ...],
                deadline_s: float,
                caller: Caller,
            ) -> AsyncIterator[dict[str, Any]]:
                async for item in super().run_sql(options, args, deadline_s, caller):
                    yield item

            @ray.method(concurrency_group="tasks")
            async def load_dataset(  # type: ignore[override]
                self,
                options: dict[str, Any],
                args: tuple[Any, ...],
                deadline_s: float,
                caller: Caller,
            ) -> dict[str, Any]:
                return await super().load_dataset(options, args, deadline_s, caller)

        _remote_class = ray.remote(  # type: ignore[call-overload]
            num_cpus=0, max_concurrency=100, concurrency_groups={"watch": 100_000, "tasks": 10_000}
        )(_Hub)
    return _remote_class


def start_hub(namespace: str, deploy: str = "", number: int = 0) -> tuple[str, Any]:
    """Creates this edge's hub (owned by the calling process); returns its name and handle.

    `deploy` and `number`: this edge's version and its start number (actors/version.py)."""
    name = hub_name(uuid.uuid4().hex, deploy, number)
    handle = hub_class().options(name=name, namespace=namespace).remote()
    return name, handle


def notify_edges(user_id: str, namespace: str) -> list[Any]:
    """Tells every edge hub of the namespace that `user_id`'s actor started; returns the calls."""
    import ray

    calls: list[Any] = []
    if not ray.is_initialized():  # the plain class in a unit test: no Ray, so no edge
        return calls
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] != namespace or not entry["name"].startswith(HUB_PREFIX):
            continue
        with contextlib.suppress(ValueError):  # the edge went away meanwhile
            hub = ray.get_actor(entry["name"], namespace=namespace)
            calls.append(hub.notify.remote(user_id))
    return calls


async def watch_edge(name: str, namespace: str, still_needed: Any) -> None:
    """Returns once the edge hub `name` is gone (or `still_needed()` turns false)."""
    import ray

    try:
        hub = await asyncio.to_thread(ray.get_actor, name, namespace=namespace)
    except ValueError:
        return
    while still_needed():
        try:
            await hub.watch.remote()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # RayActorError: the hub died with its edge
            log.info("edge %s is gone (%s)", name, type(exc).__name__)
            return
