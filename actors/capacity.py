"""Session slots: how many session actors a node holds at once, as a custom Ray resource, so that
a burst of active users queues for a process instead of running the node out of memory.

Each session actor (and each warm spare) takes one `chatdf_session` slot when the cluster has
them (the embedded node advertises SESSION_ACTORS_PER_NODE; a cluster node gets them from `ray
start --resources`), and Ray's scheduler keeps a start pending until a slot is free. Idle
actors hold their slot until they exit, so an edge whose start finds every slot taken asks its
least recently used users' actors to leave early (`SessionActor.leave_if_idle`, idle for
ACTOR_PRESSURE_IDLE_S): docs/architecture.md, "Session slots".
"""

from __future__ import annotations

import os
from pathlib import Path

SESSION_SLOT = "chatdf_session"
# What one session actor may take of a node's memory, with room to spare: measured ≈ 108 MB
# PSS active (README, benchmarks). The default slot count gives session actors 40 % of it.
ACTOR_MEMORY_BYTES = 128 * 2**20
MEMORY_SHARE = 0.4
MIN_DEFAULT_SLOTS = 4

_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def node_memory_bytes() -> int:
    """This machine's memory, or its container's limit when lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_session_slots(memory_bytes: int | None = None) -> int:
    """SESSION_ACTORS_PER_NODE=0: 40 % of the node's memory at 128 MiB per actor (76 on 24 GiB)."""
    memory = node_memory_bytes() if memory_bytes is None else memory_bytes
    return max(MIN_DEFAULT_SLOTS, int(memory * MEMORY_SHARE // ACTOR_MEMORY_BYTES))


def session_slots(configured: int) -> int:
    """The embedded node's session slots: the setting, or the default from memory when 0."""
    return configured or default_session_slots()


def free_session_slots() -> float | None:
    """Session slots free in the whole cluster now (a start may go to any node), or None when
    the cluster has none (no cap). Blocking: one GCS call; the figure may lag by a moment."""
    import ray

    from actors.tasks import slot_options

    if not slot_options(SESSION_SLOT):  # its answer is kept: no GCS call most times
        return None
    free: float = ray.available_resources().get(SESSION_SLOT, 0.0)  # type: ignore[no-untyped-call]
    return free


def slots_full() -> bool:
    """Whether a session actor started now would wait for a slot (blocking, see above)."""
    free = free_session_slots()
    return free is not None and free < 1
