"""The task gateway: session actors submit their loads and queries through an edge's hub.

Why: Ray hands a task only to a worker of the same *root detached actor* as the task's
submitter. Every session actor is detached, so each one's first query or load started a worker
process of its own (≈ 1–2 CPU-s, Polars imported afresh), and the warm workers the edge readied
(`actors.tasks.warm_task_workers`) served nobody but the edge (measured: six actors, six
workers; through one gateway, one). The hub (`actors.edges`) is owned by its edge, not detached,
so the tasks it submits share the edge's warm workers with every session actor.

The gateway relays, and holds a call until the cluster has a slot free for it
(`actors.admission`); it decides nothing else: the session actor checks its caps and time limits
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

from actors.admission import Admission, SlotCount
from actors.handover import actor_gone

log = logging.getLogger(__name__)

FAILED = "failed"  # a relayed item {"kind": FAILED, "exception": the task's Ray error}


class TaskGateway:
    """Plain class mixed into the edge hub's actor (`actors.edges.hub_class`).

    It submits a task only when the cluster has a free slot for it (`actors.admission`): what
    the slots cannot run yet waits here, in order, not in Ray's queue, whose backlog makes the
    raylet start worker processes nobody will use.
    """

    def __init__(self) -> None:
        self._relayed = {"queries": 0, "loads": 0}
        self._admissions: dict[tuple[str, float], Admission] = {}

    async def gateway_stats(self) -> dict[str, int]:
        """How many queries and loads this gateway has submitted, and how many wait for a
        slot now."""
        waiting = sum(a.waiting for a in self._admissions.values())
        return {**self._relayed, "waiting": waiting}

    def _admission(self, options: dict[str, Any]) -> Admission | None:
        """The queue of the slot resource `options` take (None: no slots, Ray's CPU shapes)."""
        resources = options.get("resources") or {}
        if len(resources) != 1:
            return None
        ((name, per_task),) = resources.items()
        found = self._admissions.get((name, per_task))
        if found is None:
            import ray

            count = SlotCount(name, ray.cluster_resources, per_task)
            found = self._admissions[(name, per_task)] = Admission(count)
        return found

    async def run_sql(
        self, options: dict[str, Any], args: tuple[Any, ...], deadline_s: float, caller: Caller
    ) -> AsyncIterator[dict[str, Any]]:
        """Submits `actors.tasks.run_sql_task` with `options` once a query slot is free and
        relays its items. A Ray error of the task (its worker died, memory, cancel) arrives as
        a FAILED item, so that the caller can tell it from this gateway's own death."""
        from actors.tasks import run_sql_task

        relay = _Relay(caller)
        try:
            async with asyncio.timeout(deadline_s), _admitted(self._admission(options)):
                if relay.caller_gone:
                    return
                task = relay.submit(run_sql_task.options(**options).remote(*args))
                self._relayed["queries"] += 1
                try:
                    async for ref in task:
                        try:
                            item: dict[str, Any] = await ref
                        except RayError as exc:
                            yield {"kind": FAILED, "exception": exc}
                            return
                        yield item
                finally:
                    relay.end()  # the task stopped before its slot is handed on
        except TimeoutError:
            log.warning("a query outlived its caller's limits; cancelled")
        finally:
            relay.end()

    async def load_dataset(
        self, options: dict[str, Any], args: tuple[Any, ...], deadline_s: float, caller: Caller
    ) -> dict[str, Any]:
        """Submits `actors.tasks.load_dataset_task` once a load slot is free and returns its
        result (or raises)."""
        from actors.tasks import load_dataset_task

        relay = _Relay(caller)
        try:
            async with asyncio.timeout(deadline_s), _admitted(self._admission(options)):
                if relay.caller_gone:  # nobody waits for the answer
                    return {"kind": FAILED, "exception": RuntimeError("the caller is gone")}
                ref = relay.submit(load_dataset_task.options(**options).remote(*args))
                self._relayed["loads"] += 1
                try:
                    result: dict[str, Any] = await ref
                except RayError as exc:
                    return {"kind": FAILED, "exception": exc}
                finally:
                    relay.end()
                return result
        finally:
            relay.end()


Caller = tuple[Any, str] | None  # (the calling actor's handle, its token), or not an actor


def _admitted(admission: Admission | None) -> contextlib.AbstractAsyncContextManager[None]:
    return contextlib.nullcontext() if admission is None else admission.slot()


class _Relay:
    """One relayed call: its task, force-cancelled when the call ends early or the calling
    actor dies. The caller is watched from the start, also while the call waits for a slot
    (a caller gone by then is not given its task)."""

    def __init__(self, caller: Caller) -> None:
        self.task: Any = None
        self.caller_gone = False
        self._ended = False
        self._watching = asyncio.create_task(self._watch(caller))

    def submit(self, task: Any) -> Any:
        self.task = task
        return task

    def end(self) -> None:
        """Stops the task if it still runs (a no-op for a finished one), and the watch."""
        if not self._ended:
            self._ended = True
            self._watching.cancel()
            self._cancel_task()

    def _cancel_task(self) -> None:
        import ray

        if self.task is not None:
            with contextlib.suppress(Exception):  # already finished
                ray.cancel(self.task, force=True)

    async def _watch(self, caller: Caller) -> None:
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
                self.caller_gone = True
                self._cancel_task()


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
