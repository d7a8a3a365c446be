"""Which started actor is a user's session: bindings kept in Ray's GCS key-value store, so every
edge and actor of the cluster agrees on one actor per user without a second store.

A session actor is started unbound (ahead of demand, see actors/spares.py) and binds itself to a
user. A binding is a key `chatdf-session/<user>/<generation>` holding the actor's name; the
highest generation is the user's session. Binding writes generation n+1 only when the actor named
by generation n is gone, with the store's put-if-absent, so two edges (or two spares) racing for
one user agree on the winner, and no key is ever overwritten or deleted by anyone but the actor it
names (or, once that actor is gone, its successor).
"""

from __future__ import annotations

from typing import Any

KEY_PREFIX = "chatdf-session/"
MAX_BIND_ATTEMPTS = 20  # each lost race means another actor won: reading it ends the loop


def _prefix(user_id: str) -> bytes:
    return f"{KEY_PREFIX}{user_id}/".encode()


def _key(user_id: str, generation: int) -> bytes:
    return _prefix(user_id) + f"{generation:012d}".encode()


def _generations(user_id: str, namespace: str) -> list[int]:
    from ray.experimental.internal_kv import _internal_kv_list

    prefix = _prefix(user_id)
    found = []
    for key in _internal_kv_list(prefix, namespace=namespace):
        tail = key[len(prefix) :]
        if tail.isdigit():
            found.append(int(tail))
    return sorted(found)


def _bound_name(user_id: str, generation: int, namespace: str) -> str | None:
    from ray.experimental.internal_kv import _internal_kv_get

    value = _internal_kv_get(_key(user_id, generation), namespace=namespace)
    return value.decode() if value else None


def _live_actor(name: str | None, namespace: str) -> Any:
    """The named actor's handle, or None when no actor of that name lives."""
    import ray

    if not name:
        return None
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def find_session_actor(user_id: str, namespace: str) -> Any:
    """The user's live session actor; ValueError when none runs (this never starts one)."""
    generations = _generations(user_id, namespace)
    if generations:
        handle = _live_actor(_bound_name(user_id, generations[-1], namespace), namespace)
        if handle is not None:
            return handle
    raise ValueError(f"no session actor runs for user {user_id}")


def bind(user_id: str, name: str, namespace: str) -> tuple[str, int]:
    """Binds the actor `name` to the user unless a live actor already is; returns the bound
    actor's name and its generation (the caller's own name when it won)."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    for _ in range(MAX_BIND_ATTEMPTS):
        generations = _generations(user_id, namespace)
        top = generations[-1] if generations else -1
        if top >= 0:
            current = _bound_name(user_id, top, namespace)
            if current == name:
                return name, top
            if _live_actor(current, namespace) is not None:
                return str(current), top
        existed = _internal_kv_put(
            _key(user_id, top + 1), name.encode(), overwrite=False, namespace=namespace
        )
        if not existed:
            for stale in generations:  # their actors are gone: nobody else reads them now
                _internal_kv_del(_key(user_id, stale), namespace=namespace)
            return name, top + 1
    raise RuntimeError(f"could not bind a session actor for user {user_id}")


def unbind(user_id: str, generation: int, namespace: str) -> None:
    """Removes the binding an exiting actor holds, so the next call starts a new one at once."""
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(_key(user_id, generation), namespace=namespace)
