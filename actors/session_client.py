"""The one typed client of the session actor, for the edge (`api/` routes and `ws/` streams).

A call names the actor's method itself (`SessionActor.post_message`), not a string: mypy checks
the arguments against the method's signature (`tests/test_mypy.py`), so a renamed or re-shaped
actor method fails the type check, not a request in production. The client resolves the user's
actor (starting one if needed, through `Sessions`), passes the request's context, re-raises
chatdf's own errors as themselves, and calls a new actor once when the one it named has gone.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

from actors.fanout import Stamped
from actors.handover import actor_gone
from actors.session import Retired, SessionActor
from actors.spares import Sessions
from chatdf.errors import ChatdfError

P = ParamSpec("P")
R = TypeVar("R")

#: One of the actor's request methods, as written on the class.
Method = Callable[Concatenate[SessionActor, P], Awaitable[R]]


def unwrap(exc: BaseException) -> BaseException:
    """Ray re-raises an actor's exception wrapped; the original is its `cause`."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


class SessionClient:
    """Calls on users' session actors. `context`: what each call carries (the request's ids and
    span, bound in the actor for the call: actors/observe.py `from_edge`)."""

    def __init__(self, sessions: Sessions, context: Callable[[], Mapping[str, str]]) -> None:
        self.sessions = sessions
        self._context = context

    async def call(
        self, user_id: str, method: Method[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Calls `method` on the user's actor, binding one if none runs (a call is activity).

        When the actor this edge knew has exited or handed over, it binds or finds the user's
        current one and calls that, once."""
        for attempt in range(2):
            handle = await self.sessions.get(user_id)
            try:
                return await self._remote(handle, method, *args, **kwargs)
            except Exception as exc:
                if actor_gone(exc) or type(unwrap(exc)).__name__ == Retired.__name__:
                    self.sessions.forget(user_id)
                    if attempt == 0:
                        continue
                raise
        raise AssertionError("unreachable")

    async def call_if_running(
        self, user_id: str, method: Method[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R | None:
        """Like `call`, but starts nothing: None when the user has no live actor (there is
        nothing of theirs to stop or cancel), also when it exits meanwhile."""
        handle = await self.sessions.find(user_id, fresh=True)
        if handle is None:
            return None
        try:
            return await self._remote(handle, method, *args, **kwargs)
        except Exception as exc:
            if actor_gone(exc):
                self.sessions.forget(user_id)
                return None
            raise

    async def _remote(
        self, handle: Any, method: Method[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        try:
            result: R = await getattr(handle, method.__name__).remote(
                *args, call_context=self._context(), **kwargs
            )
        except Exception as exc:
            inner = unwrap(exc)
            if inner is not exc and isinstance(inner, ChatdfError):
                raise inner from None
            raise
        return result


# The event stream (ws/connections.py): on a handle the edge found in the directory -----------


async def subscribe(
    handle: Any, sub_id: str, since: float, edge: str, backpressure: int
) -> AsyncGenerator[list[Stamped], None]:
    """`SessionActor.subscribe` as a Ray streaming generator: its event batches.

    `backpressure`: batches in flight to this edge at most. Ray otherwise pushes every item to
    the edge at once; with the bound a stuck edge fills the actor's (bounded) queue and is
    dropped there."""
    method = getattr(handle, SessionActor.subscribe.__name__)
    items = method.options(
        num_returns="streaming", _generator_backpressure_num_objects=backpressure
    ).remote(sub_id, since, edge)
    async for ref in items:
        batch: list[Stamped] = await ref
        yield batch


def unsubscribe(handle: Any, sub_id: str) -> Any:
    """`SessionActor.unsubscribe`: ends one subscription (an awaitable Ray result)."""
    return getattr(handle, SessionActor.unsubscribe.__name__).remote(sub_id)


def subscribe_pipe(
    handle: Any, sub_id: str, since: float, edge: str, pipe: tuple[str, str, str], in_flight: int
) -> Any:
    """`SessionActor.subscribe_pipe`: the batches through this edge's event pipe (an awaitable
    Ray result: True once subscribed, False when the actor cannot; actors/event_pipe.py).
    `pipe`: the edge's node id, socket path and the subscription's secret."""
    return getattr(handle, SessionActor.subscribe_pipe.__name__).remote(
        sub_id, since, edge, pipe, in_flight
    )
