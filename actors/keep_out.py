"""What a session actor's process keeps out (installed by `actors.session_process`).

In that process only (a Ray worker; never the edge, a task worker or a test driver), modules
the actor never uses are kept out before anything else loads. Each would otherwise be imported
just because it is installed:

- PyArrow and NumPy: Ray's serializer set-up imports PyArrow for Ray Data's types whenever it
  is importable (`ray.util.serialization_addons`), in every worker. Tasks need it; the actor
  passes JSON-shaped values only.
- Pillow: google-genai imports it to accept images, which the actor never sends.
- Rich and Pygments: httpx imports them for its command-line client.
- Polars: the actor never runs a query (`actors/tasks.py`); keeping it out makes that
  boundary a rule of the process, not only a test.

Measured in a process importing what a session actor imports: 14.5 MB less anonymous memory
(112 → 97 MB) and 0.2–0.4 CPU-s less per start (docs/architecture.md, "Session actor process").
A kept-out module raises ModuleNotFoundError, the same as not installed: each of those
imports is optional where it happens. `check_health()` reports any that got in anyway.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from typing import Any

KEPT_OUT = ("pyarrow", "numpy", "PIL", "rich", "pygments", "polars")


class _KeepOut:
    """A meta path finder that refuses the kept-out packages and lets all else through."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name.partition(".")[0] in KEPT_OUT:
            raise ModuleNotFoundError(
                f"No module named {name!r} (kept out of the actor)", name=name
            )
        return None


@contextmanager
def keeping_out() -> Iterator[None]:
    """The rule for the imports within only (a fork server's template preloading what its
    workers share: actors/fork_server.py)."""
    finder = _KeepOut()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def install_in_ray_worker() -> bool:
    """Installs the finder if this process is a Ray worker (not a driver); True if it is."""
    import ray

    if ray._private.worker.global_worker.mode != ray.WORKER_MODE:
        return False
    if not any(isinstance(f, _KeepOut) for f in sys.meta_path):
        sys.meta_path.insert(0, _KeepOut())
    return True
