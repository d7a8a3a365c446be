"""The event pipe: a session actor's events to an edge on the same node over a Unix socket, the
actor's end (the edge's: ws/event_pipe.py).

Why: one item of a Ray streaming generator costs ≈ 1.6 ms of CPU on each side when items come
paced, as a model's tokens do (bench/stream_item_cost.py), against ≈ 0.1 ms for a plain pipe;
with one item per token that was most of a streamed token's cost. Ray still finds the actor,
carries the subscription request and watches both ends' lives; only the batches take the pipe.
An actor on another node streams through Ray as before (`SessionActor.subscribe`).

Wire: the actor connects to the edge's socket and sends one hello line, `<sub_id> <secret>\n`
(the secret came with the request, through Ray), then frames: a 4-byte big-endian length and
a JSON batch `[[stamp, event], ...]`. A frame of length 0 is the clean end (the subscription
closed, or the actor is retiring); a pipe that ends without it means the actor died. The edge
answers each batch it has taken with one byte: at most SUBSCRIBER_BACKPRESSURE batches are
unanswered, so a stuck edge fills the actor's bounded queue and is dropped there, as through
Ray; and a pipe whose edge end closes (the edge died) ends the subscription at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import AsyncGenerator, Callable
from typing import Any

log = logging.getLogger(__name__)

HEADER = struct.Struct(">I")
END = HEADER.pack(0)
FRAME_MAX = 64 * 2**20  # a batch is at most 500 events (actors/fanout.py MAX_BATCH)
ACK = b"\x01"  # the edge took one batch
CONNECT_TIMEOUT_S = 5.0


def encode(batch: list[Any]) -> bytes:
    """One frame. A value JSON cannot write goes as its str(): an event the edge could not send
    on either way must not end the pipe (and come back at every resubscription)."""
    body = json.dumps(batch, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> list[Any] | None:
    """The next batch; None at the clean end. IncompleteReadError: the pipe broke."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size == 0:
        return None
    if size > FRAME_MAX:
        raise ValueError(f"event pipe frame of {size} bytes")
    batch: list[Any] = json.loads(await reader.readexactly(size))
    return batch


async def connect(
    path: str, sub_id: str, secret: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Opens the pipe to the edge's socket and introduces the subscription."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), CONNECT_TIMEOUT_S)
    writer.write(f"{sub_id} {secret}\n".encode())
    await writer.drain()
    return reader, writer


class Pipe:
    """The actor's end of one subscription's pipe: writes the batches, counts the answers.

    `in_flight`: batches the edge may leave unanswered (SUBSCRIBER_BACKPRESSURE). `on_gone`:
    called when the edge's end closes (the edge died or unsubscribed), to end the stream."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        in_flight: int,
        on_gone: Callable[[], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._credits = max(1, in_flight)
        self._credit = asyncio.Event()
        self._gone = False
        self._on_gone = on_gone

    def write(self, batch: list[Any]) -> None:
        """Writes one batch now, using one credit (the first one: within the budget)."""
        self._credits -= 1
        self._writer.write(encode(batch))

    async def pump(self, batches: AsyncGenerator[list[Any], None]) -> None:
        """Writes each batch until the stream ends, then the end frame.

        The stream is the actor's subscription (Fanout.stream): it ends when the edge
        unsubscribes, when it was dropped as too slow, or when the actor retires."""
        acks = asyncio.ensure_future(self._count_acks())
        try:
            async for batch in batches:
                while self._credits <= 0 and not self._gone:
                    self._credit.clear()
                    await self._credit.wait()
                if self._gone:
                    break
                self.write(batch)
                await self._writer.drain()
            else:
                self._writer.write(END)
                await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            log.info("event pipe to the edge broke (%s)", type(exc).__name__)
        finally:
            acks.cancel()
            with contextlib.suppress(Exception):
                await batches.aclose()
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

    async def _count_acks(self) -> None:
        """One credit back per answered batch, until the edge's end closes."""
        try:
            while got := await self._reader.read(4096):
                self._credits += got.count(ACK)
                self._credit.set()
        except (ConnectionError, OSError):
            pass
        self._gone = True
        self._credit.set()
        self._on_gone()
