"""actors.admission: the gateway's FIFO queue in front of Ray's slots (plain asyncio)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.admission import UNBOUNDED, Admission, SlotCount


async def _hold(admission: Admission, name: str, log: list[str], release: asyncio.Event) -> None:
    async with admission.slot():
        log.append(name)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_at_most_capacity_run_and_the_rest_follow_in_order() -> None:
    admission = Admission(lambda: 2)
    log: list[str] = []
    releases = {name: asyncio.Event() for name in "abcde"}
    tasks = [asyncio.create_task(_hold(admission, n, log, releases[n])) for n in "abcde"]
    await _settle()
    assert log == ["a", "b"]
    assert (admission.running, admission.waiting) == (2, 3)
    releases["b"].set()
    await _settle()
    assert log == ["a", "b", "c"]
    for event in releases.values():
        event.set()
    await asyncio.gather(*tasks)
    assert log == ["a", "b", "c", "d", "e"]
    assert (admission.running, admission.waiting) == (0, 0)


async def test_a_cancelled_waiter_takes_no_slot_and_loses_no_one_elses() -> None:
    admission = Admission(lambda: 1)
    log: list[str] = []
    first, second, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(_hold(admission, "a", log, first))
    b = asyncio.create_task(_hold(admission, "b", log, second))
    c = asyncio.create_task(_hold(admission, "c", log, third))
    await _settle()
    b.cancel()  # waiting: leaves the queue
    await _settle()
    assert admission.waiting == 1
    first.set()
    await _settle()
    assert log == ["a", "c"]
    third.set()
    await asyncio.gather(a, c)
    with pytest.raises(asyncio.CancelledError):
        await b
    assert admission.running == 0


async def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_passes_on() -> None:
    admission = Admission(lambda: 1)
    log: list[str] = []
    first, never, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
    a = asyncio.create_task(_hold(admission, "a", log, first))
    b = asyncio.create_task(_hold(admission, "b", log, never))
    c = asyncio.create_task(_hold(admission, "c", log, third))
    await _settle()
    first.set()
    await asyncio.sleep(0)  # a releases and hands b the slot; b has not resumed yet
    b.cancel()
    await _settle()
    assert log == ["a", "c"]
    third.set()
    await asyncio.gather(a, c)
    assert admission.running == 0


async def test_a_grown_capacity_admits_more_at_the_next_release() -> None:
    capacity = {"n": 1}
    admission = Admission(lambda: capacity["n"])
    log: list[str] = []
    events = {n: asyncio.Event() for n in "abc"}
    tasks = [asyncio.create_task(_hold(admission, n, log, events[n])) for n in "abc"]
    await _settle()
    capacity["n"] = 3
    events["a"].set()
    await _settle()
    assert log == ["a", "b", "c"]
    for event in events.values():
        event.set()
    await asyncio.gather(*tasks)


def test_slot_count_divides_the_clusters_total_and_rereads_it_after_a_while() -> None:
    now = {"t": 0.0}
    totals: dict[str, Any] = {"chatdf_load": 8.0}
    count = SlotCount("chatdf_load", lambda: totals, per_task=4, clock=lambda: now["t"])
    assert count() == 2
    totals["chatdf_load"] = 16.0  # a node joined
    assert count() == 2  # within the refresh interval
    now["t"] = 11.0
    assert count() == 4


def test_slot_count_is_unbounded_without_the_resource_and_keeps_a_count_on_errors() -> None:
    assert SlotCount("chatdf_query", lambda: {"CPU": 2.0})() == UNBOUNDED
    now = {"t": 0.0}
    reads = iter([{"chatdf_query": 4.0}])

    def read() -> dict[str, Any]:
        return next(reads)  # the second read fails (StopIteration): the GCS unreachable

    count = SlotCount("chatdf_query", read, clock=lambda: now["t"])
    assert count() == 4
    now["t"] = 20.0
    assert count() == 4
