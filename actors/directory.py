"""Which started actor is a user's session: bindings kept in Ray's GCS key-value store, so every
edge and actor of the cluster agrees on one actor per user without a second store.

A session actor is started unbound (ahead of demand, see actors/spares.py) and binds itself to a
user. A binding is a key `chatdf-session/<user>/<generation>` holding the actor's name; the
highest generation is the user's session. Binding writes generation n+1 only when the actor named
by generation n is gone, with the store's put-if-absent, so two edges (or two spares) racing for
one user agree on the winner, and no key is ever overwritten or deleted by anyone but the actor it
names (or, once that actor is gone, its successor). An actor of a newer deploy may also bind
over a live one of an older deploy (`replacing`), which then drains and exits (actors/version.py).
"""

from __future__ import annotations

from typing import Any

KEY_PREFIX = "chatdf-session/"
RETIRING_PREFIX = "chatdf-retiring/"  # bindings of older deploys' actors finishing their turns
KINDS = (KEY_PREFIX, RETIRING_PREFIX)  # the current binding first, then the retiring ones
LIST_ALL_FROM = 16  # users in one lookup from which listing every binding is the cheaper way
MAX_BIND_ATTEMPTS = 20  # each lost race means another actor won: reading it ends the loop


def _prefix(user_id: str, kind: str = KEY_PREFIX) -> bytes:
    return f"{kind}{user_id}/".encode()


def _key(user_id: str, generation: int, kind: str = KEY_PREFIX) -> bytes:
    return _prefix(user_id, kind) + f"{generation:012d}".encode()


def _generations(user_id: str, namespace: str, kind: str = KEY_PREFIX) -> list[int]:
    from ray.experimental.internal_kv import _internal_kv_list

    prefix = _prefix(user_id, kind)
    found = []
    for key in _internal_kv_list(prefix, namespace=namespace):
        tail = key[len(prefix) :]
        if tail.isdigit():
            found.append(int(tail))
    return sorted(found)


def _bound_name(
    user_id: str, generation: int, namespace: str, kind: str = KEY_PREFIX
) -> str | None:
    from ray.experimental.internal_kv import _internal_kv_get

    value = _internal_kv_get(_key(user_id, generation, kind), namespace=namespace)
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
    return find_bound(user_id, namespace)[1]


def find_bound(user_id: str, namespace: str) -> tuple[str, Any]:
    """The name and handle of the user's live session actor; ValueError when none runs."""
    generations = _generations(user_id, namespace)
    if generations:
        name = _bound_name(user_id, generations[-1], namespace)
        handle = _live_actor(name, namespace)
        if handle is not None:
            return str(name), handle
    raise ValueError(f"no session actor runs for user {user_id}")


def find_streaming(user_id: str, namespace: str) -> list[Any]:
    """The user's live session actors, current first: during a deploy's handover also the older
    deploy's actor, still finishing turns whose events the edges must keep streaming."""
    kinds = {kind: _generations(user_id, namespace, kind) for kind in KINDS}
    return _live_bound(user_id, namespace, kinds)


def find_streaming_many(user_ids: list[str], namespace: str) -> dict[str, list[Any]]:
    """`find_streaming` for each of these users. From `LIST_ALL_FROM` users on, the bindings
    of all users are listed once (two calls to the GCS in all, not two per user): the listing
    grows with the live session actors of the cluster, a burst of lookups with its size."""
    if len(user_ids) < LIST_ALL_FROM:
        return {user_id: find_streaming(user_id, namespace) for user_id in user_ids}
    listed = {kind: _all_generations(namespace, kind) for kind in KINDS}
    return {
        user_id: _live_bound(
            user_id, namespace, {kind: listed[kind].get(user_id, []) for kind in KINDS}
        )
        for user_id in user_ids
    }


def _all_generations(namespace: str, kind: str) -> dict[str, list[int]]:
    """Every user's bound generations of one kind, sorted, by user."""
    from ray.experimental.internal_kv import _internal_kv_list

    found: dict[str, list[int]] = {}
    for key in _internal_kv_list(kind.encode(), namespace=namespace):
        user, _, tail = key[len(kind) :].decode(errors="replace").rpartition("/")
        if user and tail.isdigit():
            found.setdefault(user, []).append(int(tail))
    return {user: sorted(generations) for user, generations in found.items()}


def _live_bound(user_id: str, namespace: str, generations: dict[str, list[int]]) -> list[Any]:
    """The live actors bound to the user in these generations (by kind), newest first."""
    found = []
    for kind in KINDS:
        for generation in reversed(generations[kind]):
            handle = _live_actor(_bound_name(user_id, generation, namespace, kind), namespace)
            if handle is not None:
                found.append(handle)
    return found


def bind(user_id: str, name: str, namespace: str, replacing: str = "") -> tuple[str, int]:
    """Binds the actor `name` to the user unless a live actor already is; returns the bound
    actor's name and its generation (the caller's own name when it won).

    `replacing`: the name of a live actor of an older deploy that this one takes over from; it
    counts as gone here (it stops taking new work once told, see SessionActor.retire). Its
    binding moves to the retiring keys, which edges still stream from but nobody binds to.
    """
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    for _ in range(MAX_BIND_ATTEMPTS):
        generations = _generations(user_id, namespace)
        top = generations[-1] if generations else -1
        if top >= 0:
            current = _bound_name(user_id, top, namespace)
            if current == name:
                return name, top
            if current != replacing and _live_actor(current, namespace) is not None:
                return str(current), top
        # Past every generation ever bound, retiring ones included: no two keys share a number.
        older = _generations(user_id, namespace, RETIRING_PREFIX)
        top = max(top, older[-1] if older else -1)
        existed = _internal_kv_put(
            _key(user_id, top + 1), name.encode(), overwrite=False, namespace=namespace
        )
        if not existed:
            for stale in generations:  # their actors are gone: nobody else reads them now
                if replacing and _bound_name(user_id, stale, namespace) == replacing:
                    # Still finishing its turns; it removes this key as it exits.
                    retiring = _key(user_id, stale, RETIRING_PREFIX)
                    _internal_kv_put(retiring, replacing.encode(), namespace=namespace)
                _internal_kv_del(_key(user_id, stale), namespace=namespace)
            for gone in _generations(user_id, namespace, RETIRING_PREFIX):
                if _live_actor(_bound_name(user_id, gone, namespace, RETIRING_PREFIX), namespace):
                    continue
                _internal_kv_del(_key(user_id, gone, RETIRING_PREFIX), namespace=namespace)
            return name, top + 1
    raise RuntimeError(f"could not bind a session actor for user {user_id}")


def unbind(user_id: str, generation: int, namespace: str, name: str) -> None:
    """Removes the binding an exiting actor (`name`) holds, so the next call starts a new one
    at once; a key that names another actor is left alone."""
    from ray.experimental.internal_kv import _internal_kv_del

    for kind in (KEY_PREFIX, RETIRING_PREFIX):
        if _bound_name(user_id, generation, namespace, kind) == name:
            _internal_kv_del(_key(user_id, generation, kind), namespace=namespace)
