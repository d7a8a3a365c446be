"""Which deploy a session actor belongs to: its code and settings, and which of two deploys is
newer, so that an edge of a new deploy hands a user over from an actor of an older one.

A live actor keeps the code and settings it started with. Every session actor's name therefore
carries a version, a digest of the code that runs in the actor (the `actors` and `chatdf`
packages) and of the settings it got, edge-only settings left out. Versions are ordered by the
latest start of an edge running them: each starting edge takes the next number of a sequence
kept in Ray's GCS key-value store (put-if-absent, so two edges never share one; no clocks
involved) and writes it as its version's rank, so every edge of the cluster agrees which of two
versions is the current deploy. An old edge still running beside new ones (a rolling deploy)
never takes a user back, since it started earlier; a rollback's edges start later, so they do
take users over.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from chatdf.settings import Settings

VERSION_PREFIX = "chatdf-version/"  # -> the version's rank: the number of its latest edge start
STARTS_PREFIX = "chatdf-edge-starts/"  # the sequence of edge starts (the last few are kept)
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


def register(version: str, namespace: str) -> float:
    """Records that an edge of this version starts now; returns its rank, higher than that of
    every edge that started before."""
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
        if rank(version, namespace) < number:  # an edge of it that started later may have won
            _internal_kv_put(
                f"{VERSION_PREFIX}{version}".encode(),
                str(number).encode(),
                overwrite=True,
                namespace=namespace,
            )
        for old in taken[:-STARTS_KEPT]:
            _internal_kv_del(prefix + f"{old:012d}".encode(), namespace=namespace)
        return float(number)
    raise RuntimeError("could not record this edge's start (too many edges starting at once)")


def rank(version: str, namespace: str) -> float:
    """The number of the latest start of an edge of `version`; 0.0 (older than any) when
    unknown or from before versions."""
    from ray.experimental.internal_kv import _internal_kv_get

    if not version:
        return 0.0
    return _rank_value(_internal_kv_get(f"{VERSION_PREFIX}{version}".encode(), namespace=namespace))


def _rank_value(raw: bytes | None) -> float:
    try:
        return float(raw.decode()) if raw else 0.0
    except ValueError:
        return 0.0
