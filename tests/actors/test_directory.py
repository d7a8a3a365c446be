"""Looking up many users' session actors at once (actors/directory.py), on the real GCS."""

from __future__ import annotations

import uuid
from typing import Any

import ray

from actors import directory
from chatdf.settings import Settings


@ray.remote(num_cpus=0)
class Named:
    """A live actor to bind users to (the directory only needs its name to resolve)."""

    def ready(self) -> bool:
        return True


def ids(handles: list[Any]) -> list[str]:
    return [h._actor_id.hex() for h in handles]


def test_a_burst_of_lookups_lists_the_bindings_once_and_finds_what_one_by_one_finds(
    ray_session: None, settings: Settings
) -> None:
    ns, tag = settings.ray_namespace, uuid.uuid4().hex
    names = [f"dir-{tag}-x", f"dir-{tag}-y"]
    x, y = (Named.options(name=n, namespace=ns).remote() for n in names)  # type: ignore[attr-defined]
    ray.get([x.ready.remote(), y.ready.remote()])
    one, two, gone = f"one-{tag}", f"two-{tag}", f"gone-{tag}"
    directory.bind(one, names[0], ns)
    directory.bind(two, names[0], ns)
    directory.bind(two, names[1], ns, replacing=names[0])  # a handover: y current, x retiring
    directory.bind(gone, f"dir-{tag}-never-started", ns)
    nobody = [f"nobody-{tag}-{i}" for i in range(directory.LIST_ALL_FROM)]
    users = [one, two, gone, *nobody]
    try:
        many = directory.find_streaming_many(users, ns)
        assert ids(many[one]) == ids([x])
        assert ids(many[two]) == ids([y, x])  # current first
        assert many[gone] == [] and all(many[u] == [] for u in nobody)
        assert {u: ids(h) for u, h in many.items()} == {
            u: ids(directory.find_streaming(u, ns)) for u in users
        }
        few = directory.find_streaming_many([one, two], ns)  # below LIST_ALL_FROM: one by one
        assert {u: ids(h) for u, h in few.items()} == {one: ids([x]), two: ids([y, x])}
    finally:
        for handle in (x, y):
            ray.kill(handle, no_restart=True)
