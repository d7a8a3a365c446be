"""The module Ray imports for a session actor's class, in the actor's own process.

Importing it there first keeps out what the actor never uses (`actors.keep_out`: PyArrow,
NumPy, Pillow, Rich, Pygments, Polars), before `actors.session` and Ray's serializer set-up
load anything. Imported anywhere else (the edge, to name the class), it changes nothing.
"""

from __future__ import annotations

from actors.keep_out import install_in_ray_worker

install_in_ray_worker()

from actors.session import SessionActor as _Plain  # noqa: E402  # after the finder, on purpose


class SessionActor(_Plain):
    """SessionActor as Ray hosts it (same name: the process is titled `ray::SessionActor`)."""
