"""The Ray shell of the session actor (actors/session.py holds its logic, a plain class): the
remote class, starting one unbound, and the blocking way to a user's actor that tests and
tools use (the edge's way is async: actors/spares.py, actors/session_client.py)."""

from __future__ import annotations

import uuid
from typing import Any

from actors import directory
from actors.version import actor_name, deploy_version
from chatdf.settings import Settings

_remote_class: Any = None


def actor_class() -> Any:
    """The Ray shell around SessionActor: async, no CPU slot, many concurrent calls.

    No restarts: a restarted actor would come back unbound under a name a binding points to. A
    dead one is replaced instead (the next call binds a new actor; see api/deps.call_actor).
    """
    global _remote_class
    if _remote_class is None:
        import ray

        # The class by that module: its process keeps out what the actor never uses.
        from actors.session_process import SessionActor as Hosted

        # Ray's stubs lack actor-only options such as max_concurrency.
        _remote_class = ray.remote(  # type: ignore[call-overload]
            num_cpus=0, max_concurrency=1000, max_restarts=0
        )(Hosted)
    return _remote_class


def start_unbound_actor(
    settings: Settings, edge: str = "", version: str | None = None
) -> tuple[str, Any]:
    """Starts a session actor bound to nobody yet: detached (a bound one outlives its edge),
    self-reaping once bound, gone with `edge` while unbound, holding a session slot (when the
    cluster has them: actors/capacity.py). Returns its name and handle.

    Its name carries the deploy's version (actors/version.py), computed from `settings` unless
    given."""
    from actors.capacity import SESSION_SLOT
    from actors.tasks import slot_options

    version = deploy_version(settings) if version is None else version
    name = actor_name(version, uuid.uuid4().hex)
    handle = (
        actor_class()
        .options(
            name=name,
            namespace=settings.ray_namespace,
            lifetime="detached",
            **slot_options(SESSION_SLOT),  # pending until a node has a session slot free
        )
        .remote(None, settings, edge=edge, version=version)
    )
    return name, handle


def get_session_actor(user_id: str, settings: Settings) -> Any:
    """The user's actor, started and bound on first use (blocking; the edge's path is async)."""
    import ray

    namespace = settings.ray_namespace
    try:
        return directory.find_session_actor(user_id, namespace)
    except ValueError:
        pass
    name, handle = start_unbound_actor(settings)
    winner = ray.get(handle.bind.remote(user_id))
    if winner == name:
        return handle
    ray.kill(handle, no_restart=True)
    return ray.get_actor(winner, namespace=namespace)
