"""Fanout without Ray: order, batching under a backlog, closing, and dropping a stuck subscriber."""

from __future__ import annotations

import asyncio

from actors.fanout import MAX_BATCH, Fanout


async def test_registration_batch_then_events_in_order() -> None:
    fanout = Fanout(queue_max=100)
    stream = fanout.stream("a")
    assert await anext(stream) == []  # registered
    for i in range(3):
        fanout.publish({"n": i})
    assert await anext(stream) == [{"n": 0}, {"n": 1}, {"n": 2}]  # backlog: one batch
    fanout.close("a")
    assert [b async for b in stream] == []
    assert len(fanout) == 0


async def test_batches_are_bounded_and_keep_order() -> None:
    fanout = Fanout(queue_max=10 * MAX_BATCH)
    stream = fanout.stream("a")
    await anext(stream)
    for i in range(MAX_BATCH + 7):
        fanout.publish({"n": i})
    fanout.close("a")
    batches = [b async for b in stream]
    assert [len(b) for b in batches] == [MAX_BATCH, 7]
    assert [e["n"] for b in batches for e in b] == list(range(MAX_BATCH + 7))


async def test_every_subscriber_gets_every_event() -> None:
    fanout = Fanout(queue_max=100)
    a, b = fanout.stream("a"), fanout.stream("b")
    await anext(a)
    await anext(b)
    fanout.publish({"n": 1})
    assert await anext(a) == [{"n": 1}]
    assert await anext(b) == [{"n": 1}]


async def test_a_stuck_subscriber_is_dropped_not_buffered_forever() -> None:
    fanout = Fanout(queue_max=5)
    stuck, live = fanout.stream("stuck"), fanout.stream("live")
    await anext(stuck)
    await anext(live)
    for i in range(6):  # one more than the stuck queue holds
        fanout.publish({"n": i})
        assert len(await anext(live)) == 1
    assert len(fanout) == 1  # only "live" is left
    assert await asyncio.wait_for(anext(stuck, None), 1) is None  # its stream ended
