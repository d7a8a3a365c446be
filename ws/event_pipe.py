"""The edge's end of the event pipe (actors/event_pipe.py): a Unix socket that session actors on
this node connect to, to stream a subscription's batches without Ray's per-item cost.

The socket lives in a directory only this user can enter (mode 0700, like the fork server's), and
a connection is taken only with the secret of a subscription the edge is waiting for: a random
one per subscription, sent to the actor through Ray. Nothing else is ever read from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import shutil
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from actors.event_pipe import ACK, read_frame
from actors.fanout import Stamped
from actors.session import SessionActor
from actors.session_client import subscribe_pipe

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 5.0  # a connection that does not introduce itself in time is closed
HELLO_MAX = 256


class PipeBroken(Exception):
    """The pipe ended without its end frame: the actor's process is gone."""


class EventPipes:
    """The listening socket, and the subscriptions waiting for their actor to connect."""

    def __init__(self) -> None:
        self.path = ""
        self.node_id = ""
        self._dir = ""
        self._server: asyncio.AbstractServer | None = None
        self._waiting: dict[str, tuple[str, asyncio.Future[Any]]] = {}

    async def start(self) -> None:
        import ray

        self._dir = tempfile.mkdtemp(prefix="chatdf-events-")  # 0700
        self.path = str(Path(self._dir) / "edge.sock")
        self._server = await asyncio.start_unix_server(self._accept, path=self.path)
        self.node_id = ray.get_runtime_context().get_node_id()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""

    async def subscribe(
        self, handle: Any, sub_id: str, since: float, edge: str, in_flight: int
    ) -> AsyncGenerator[list[Stamped], None] | None:
        """Subscribes through the pipe: the batches, or None when the actor cannot (it runs on
        another node, or has retired); the caller then subscribes through Ray."""
        if not hasattr(handle, SessionActor.subscribe_pipe.__name__):
            return None  # an actor of an older deploy, still finishing its turns
        secret = secrets.token_urlsafe(24)
        arrived: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[sub_id] = (secret, arrived)
        try:
            pipe = (self.node_id, self.path, secret)
            if not await subscribe_pipe(handle, sub_id, since, edge, pipe, in_flight):
                return None
            # The actor has connected before it answered; its hello may still be in transit.
            reader, writer = await asyncio.wait_for(arrived, HELLO_TIMEOUT_S)
        except BaseException:
            if arrived.done() and not arrived.cancelled():
                arrived.result()[1].close()  # connected, but the subscription failed
            raise
        finally:
            self._waiting.pop(sub_id, None)
        return _frames(reader, writer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT_S)
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            writer.close()  # ValueError: a line past the reader's limit
            return
        sub_id, _, secret = line[:HELLO_MAX].decode(errors="replace").strip().partition(" ")
        entry = self._waiting.get(sub_id)
        if entry is None or not hmac.compare_digest(entry[0].encode(), secret.encode()):
            log.warning("event pipe: a connection for no awaited subscription; closed")
            writer.close()
            return
        del self._waiting[sub_id]
        if entry[1].done():  # the subscriber gave up waiting
            writer.close()
            return
        entry[1].set_result((reader, writer))


async def _frames(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> AsyncGenerator[list[Stamped], None]:
    try:
        while True:
            try:
                batch = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise PipeBroken(type(exc).__name__) from exc
            if batch is None:
                return
            yield [(stamp, event) for stamp, event in batch]
            writer.write(ACK)  # taken: the actor may send one more
    finally:
        writer.close()
