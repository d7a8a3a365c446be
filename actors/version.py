"""Which deploy a session actor belongs to: its code and settings, and which of the deploys
running in the cluster is current, so that an edge of a new deploy hands a user over from an
actor of an older one.

A live actor keeps the code and settings it started with. Every session actor's name therefore
carries a version, a digest of the code that runs in the actor (the `actors` and `chatdf`
packages) and of the settings it got, edge-only settings left out. Each starting edge takes the
next number of a sequence kept in Ray's GCS key-value store (put-if-absent, so no two edges share
one; no clocks involved) and puts its version and number in its hub's name (actors/edges.py).
A version's rank is the highest number among the live edges running it; with no live edge it is
0. So the version of the edge that started last and still runs is current: during a rolling
deploy the old edges (started earlier) never take users back, a rollback's edges (started last)
take them over, and a version whose edges are all gone ranks below every running one.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from chatdf.settings import Settings

STARTS_PREFIX = "chatdf-edge-starts/"  # the sequence of edge starts (the last few are kept)
HUB_PREFIX = "edge:"  # an edge hub's name: edge:<version>:<start number>:<unique>
STARTS_KEPT = 100
MAX_ATTEMPTS = 50  # each lost race means another edge took a number: the next try takes the next
VERSION_CHARS = 12
NAME_PREFIX = "session:"
# Settings that may differ between edges of one deploy (each edge its own address, port,
# metrics port...) and that the actor does not use: they do not make a new version.
EDGE_ONLY = frozenset(
    {
        "host",
        "port",
        "public_url",
        "ray_address",
        "ray_num_cpus",
        "ray_metrics_export_port",
        "google_redirect_uri",
        "warm_session_actors",
        "warm_task_workers",
        "shutdown_timeout_s",
        "health_ready_cache_s",
        "metrics_enabled",
        "database_pool_size",
        "database_max_overflow",
    }
)


@functools.cache
def code_digest() -> str:
    """A digest of the Python sources that run in a session actor and its tasks."""
    import actors
    import chatdf

    digest = hashlib.sha256()
    for package in (actors, chatdf):
        root = Path(str(package.__file__)).resolve().parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def settings_digest(settings: Settings) -> str:
    values: dict[str, Any] = {}
    for field in sorted(type(settings).model_fields):
        if field in EDGE_ONLY:
            continue
        value = getattr(settings, field)
        if hasattr(value, "get_secret_value"):  # a new key is a new deploy too (only hashed)
            value = value.get_secret_value()
        values[field] = value
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def deploy_version(settings: Settings) -> str:
    """The version a session actor started with these settings, by this code, runs."""
    both = f"{code_digest()}:{settings_digest(settings)}"
    return hashlib.sha256(both.encode()).hexdigest()[:VERSION_CHARS]


def actor_name(version: str, unique: str) -> str:
    return f"{NAME_PREFIX}{version}:{unique}"


def version_of(name: str) -> str:
    """The version in a session actor's name; "" for a name from before versions existed."""
    parts = name.split(":")
    return parts[1] if len(parts) == 3 and parts[0] + ":" == NAME_PREFIX else ""


def register(version: str, namespace: str) -> int:
    """Takes the next number of the cluster's edge starts for an edge of `version` starting now
    (higher than that of every edge that started before)."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_list, _internal_kv_put

    prefix = STARTS_PREFIX.encode()
    for _ in range(MAX_ATTEMPTS):
        taken = sorted(
            int(key[len(prefix) :])
            for key in _internal_kv_list(prefix, namespace=namespace)
            if key[len(prefix) :].isdigit()
        )
        number = (taken[-1] if taken else 0) + 1
        key = prefix + f"{number:012d}".encode()
        if _internal_kv_put(key, version.encode(), overwrite=False, namespace=namespace):
            continue  # another edge took it first
        for old in taken[:-STARTS_KEPT]:
            _internal_kv_del(prefix + f"{old:012d}".encode(), namespace=namespace)
        return number
    raise RuntimeError("could not record this edge's start (too many edges starting at once)")


def hub_name(version: str, number: int, unique: str) -> str:
    return f"{HUB_PREFIX}{version}:{number}:{unique}"


def hub_rank(name: str) -> tuple[str, int] | None:
    """The version and start number in an edge hub's name (None: not a versioned hub)."""
    parts = name.split(":")
    if len(parts) != 4 or parts[0] + ":" != HUB_PREFIX or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def live_ranks(namespace: str) -> dict[str, int]:
    """Each version's rank: the highest start number among its live edges."""
    import ray

    ranks: dict[str, int] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        found = hub_rank(entry["name"]) if entry["namespace"] == namespace else None
        if found is not None:
            ranks[found[0]] = max(ranks.get(found[0], 0), found[1])
    return ranks
