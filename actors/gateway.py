"""The task gateway: session actors submit their loads and queries through an edge's hub.

Why: Ray hands a task only to a worker of the same *root detached actor* as the task's
submitter. Every session actor is detached, so each one's first query or load started a worker
process of its own (≈ 1–2 CPU-s, Polars imported afresh), and the warm workers the edge readied
(`actors.tasks.warm_task_workers`) served nobody but the edge (measured: six actors, six
workers; through one gateway, one). The hub (`actors.edges`) is owned by its edge, not detached,
so the tasks it submits share the edge's warm workers with every session actor.

The gateway relays, it decides nothing: the session actor checks its caps and time limits
(`actors.tasks`, `actors.datasets`) as before. A stopped turn cancels its call, and the gateway
force-cancels the task. A gateway that dies (its edge went away) fails the call with an actor
error: the caller then picks another edge's gateway and tries once more, or, with no gateway
left, submits the task itself (cold worker, still correct). A caller that dies is noticed by
the gateway, which stops the caller's task: each call carries the caller's handle and a token,
and the gateway holds a `hold_while_running(token)` call on the caller, which fails when the
caller dies (`caller_watch`). `deadline_s` bounds a task even so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ray.exceptions import RayError

from actors.handover import actor_gone

log = logging.getLogger(__name__)

FAILED = "failed"  # a relayed item {"kind": FAILED, "exception": the task's Ray error}


class TaskGateway:
    """Plain class mixed into the edge hub's actor (`actors.edges.hub_class`)."""

    def __init__(self) -> None:
        self._relayed = {"queries": 0, "loads": 0}

    async def gateway_stats(self) -> dict[str, int]:
        """How many queries and loads this gateway has submitted."""
        return dict(self._relayed)

    async def run_sql(
        self, options: dict[str, Any], args: tuple[Any, ...], deadline_s: float, caller: Caller
    ) -> AsyncIterator[dict[str, Any]]:
        """Submits `actors.tasks.run_sql_task` with `options` and relays its items. A Ray error
        of the task (its worker died, memory, cancel) arrives as a FAILED item, so that the
        caller can tell it from this gateway's own death."""
        import ray

        from actors.tasks import run_sql_task

        task = run_sql_task.options(**options).remote(*args)
        self._relayed["queries"] += 1
        watching = _stop_if_caller_dies(caller, task)
        try:
            async with asyncio.timeout(deadline_s):
                async for ref in task:
                    try:
                        item: dict[str, Any] = await ref
                    except RayError as exc:
                        yield {"kind": FAILED, "exception": exc}
                        return
                    yield item
        except TimeoutError:
            log.warning("a query outlived its caller's limits; cancelled")
        finally:
            watching.cancel()
            with contextlib.suppress(Exception):  # already finished
                ray.cancel(task, force=True)

    async def load_dataset(
        self, options: dict[str, Any], args: tuple[Any, ...], deadline_s: float, caller: Caller
    ) -> dict[str, Any]:
        """Submits `actors.tasks.load_dataset_task` and returns its result (or raises)."""
        import ray

        from actors.tasks import load_dataset_task

        ref = load_dataset_task.options(**options).remote(*args)
        self._relayed["loads"] += 1
        watching = _stop_if_caller_dies(caller, ref)
        try:
            async with asyncio.timeout(deadline_s):
                try:
                    result: dict[str, Any] = await ref
                except RayError as exc:
                    return {"kind": FAILED, "exception": exc}
                return result
        finally:
            watching.cancel()
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)


Caller = tuple[Any, str] | None  # (the calling actor's handle, its token), or not an actor


def _stop_if_caller_dies(caller: Caller, task: Any) -> asyncio.Task[None]:
    """Force-cancels `task` if the calling actor dies before it lets go of the token."""

    async def watch() -> None:
        import ray

        if caller is None:
            return
        handle, token = caller
        try:
            await handle.hold_while_running.remote(token)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if actor_gone(exc):  # the caller's actor, for good (not a brief unavailability)
                log.info("a task's caller died; the task is stopped")
                with contextlib.suppress(Exception):
                    ray.cancel(task, force=True)

    return asyncio.create_task(watch())


# The caller's side (a session actor's process) ------------------------------------------


class NoGateway(Exception):
    """No edge hub is alive in the namespace: submit the task directly."""


_chosen: dict[tuple[str, str], Any] = {}  # (namespace, version) -> the hub this process uses
_running: dict[str, asyncio.Event] = {}  # token -> set when this process's call has ended


@contextlib.contextmanager
def caller_watch() -> Iterator[Caller]:
    """What a gateway call carries so that the gateway notices this actor's death: this
    actor's handle and a token its `hold_while_running` waits on until the call ends."""
    import ray

    context = ray.get_runtime_context()
    if context.get_actor_id() is None:  # a driver (tests, tools): dies with its own tasks
        yield None
        return
    token = uuid.uuid4().hex
    _running[token] = asyncio.Event()
    try:
        yield (context.current_actor, token)
    finally:
        _running.pop(token).set()


async def hold(token: str) -> None:
    """The session actor's `hold_while_running`: returns once the call of `token` has ended."""
    event = _running.get(token)
    if event is not None:
        await event.wait()


async def gateway(namespace: str, version: str) -> Any:
    """A live hub of the namespace whose edge runs `version` (this actor's own deploy: a hub of
    another deploy would run its code with this one's arguments, or lack the gateway's
    methods); the same one for this process until it fails."""
    key = (namespace, version)
    found = _chosen.get(key)
    if found is None:
        found = await asyncio.to_thread(_pick, namespace, version)
        _chosen[key] = found
    return found


def forget(namespace: str, version: str, handle: Any) -> None:
    """After `handle` failed: the next call picks another hub."""
    if _chosen.get((namespace, version)) is handle:
        del _chosen[(namespace, version)]


def _pick(namespace: str, version: str) -> Any:
    import ray

    from actors.version import hub_rank

    if not ray.is_initialized():  # never start a Ray of its own just to look
        raise NoGateway
    names = [
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == namespace and (hub_rank(entry["name"]) or ("", 0))[0] == version
    ]
    random.shuffle(names)  # spread the session actors over the edges
    for name in names:
        with contextlib.suppress(ValueError):  # that edge went away meanwhile
            return ray.get_actor(name, namespace=namespace)
    raise NoGateway
