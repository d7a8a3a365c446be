"""Fanout without Ray: order, batching, the buffer of recent events, closing, dropping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from actors.fanout import MAX_BATCH, Fanout, Stamped


def events(batch: list[Stamped]) -> list[dict[str, object]]:
    return [event for _stamp, event in batch]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fanout_with(clock: Callable[[], float], **kwargs: int | float) -> Fanout:
    return Fanout(queue_max=100, clock=clock, **kwargs)  # type: ignore[arg-type]


async def test_registration_batch_then_events_in_order() -> None:
    fanout = Fanout(queue_max=100)
    stream = fanout.stream("a")
    assert await anext(stream) == []  # registered
    for i in range(3):
        fanout.publish({"n": i})
    assert events(await anext(stream)) == [{"n": 0}, {"n": 1}, {"n": 2}]  # backlog: one batch
    fanout.close("a")
    assert [b async for b in stream] == []
    assert len(fanout) == 0


async def test_stamps_strictly_increase_even_on_a_stopped_clock() -> None:
    clock = FakeClock()
    fanout = fanout_with(clock)
    stream = fanout.stream("a")
    await anext(stream)
    for i in range(3):
        fanout.publish({"n": i})
    stamps = [stamp for stamp, _e in await anext(stream)]
    assert stamps == sorted(set(stamps)) and stamps[0] == clock.now


async def test_a_late_subscriber_gets_buffered_events_from_its_time_on_only() -> None:
    """What was published between a socket's accept and its edge's subscription arrives;
    what was published before the accept never does."""
    clock = FakeClock()
    fanout = fanout_with(clock)
    fanout.publish({"n": "before"})
    clock.now += 1
    accepted_at = clock.now
    fanout.publish({"n": "between"})
    clock.now += 1
    stream = fanout.stream("late", since=accepted_at)
    assert await anext(stream) == []
    fanout.publish({"n": "after"})
    assert events(await anext(stream)) == [{"n": "between"}, {"n": "after"}]


async def test_the_buffer_is_bounded_in_count_and_age() -> None:
    clock = FakeClock()
    fanout = fanout_with(clock, buffer_max=3, buffer_s=10.0)
    for i in range(5):
        fanout.publish({"n": i})
    assert [e["n"] for _s, e in fanout.recent(0.0)] == [2, 3, 4]
    clock.now += 11
    assert fanout.recent(0.0) == []


async def test_batches_are_bounded_and_keep_order() -> None:
    fanout = Fanout(queue_max=10 * MAX_BATCH)
    stream = fanout.stream("a")
    await anext(stream)
    for i in range(MAX_BATCH + 7):
        fanout.publish({"n": i})
    fanout.close("a")
    batches = [b async for b in stream]
    assert [len(b) for b in batches] == [MAX_BATCH, 7]
    assert [e["n"] for b in batches for e in events(b)] == list(range(MAX_BATCH + 7))


async def test_every_subscriber_gets_every_event() -> None:
    fanout = Fanout(queue_max=100)
    a, b = fanout.stream("a"), fanout.stream("b")
    await anext(a)
    await anext(b)
    fanout.publish({"n": 1})
    assert events(await anext(a)) == [{"n": 1}]
    assert events(await anext(b)) == [{"n": 1}]


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


async def test_a_dead_edge_loses_all_its_subscriptions() -> None:
    fanout = Fanout(queue_max=5)
    a, b, c = fanout.stream("a", edge="e1"), fanout.stream("b", edge="e1"), fanout.stream("c")
    for s in (a, b, c):
        await anext(s)
    assert fanout.edges() == {"e1", ""}
    assert fanout.drop_edge("e1") == 2
    assert len(fanout) == 1 and fanout.edges() == {""}
    assert await asyncio.wait_for(anext(a, None), 1) is None
