"""The node-local dataset cache stays within dataset_cache_max_bytes, evicting the least used."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from actors.cache import CACHE_FULL, CacheFull, cache_path
from actors.dataset_task import ensure_local, inspect_dataset
from actors.scan import scan_local
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer

DAY_S = 24 * 3600
ROWS = 100
BODY = b"a,b\n" + b"1,2\n" * ROWS  # every test file has this size, so bounds read as "n files"
SIZE = len(BODY)

# Holds a cache file's lock from another process, as a downloader on the same node would.
HOLD_LOCK = (
    "import fcntl, sys\n"
    "handle = open(sys.argv[1], 'a')\n"
    "fcntl.flock(handle, fcntl.LOCK_EX)\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


def _bounded(settings: Settings, files: float) -> Settings:
    return settings.model_copy(update={"dataset_cache_max_bytes": int(files * SIZE)})


def _fetch(server: FakeDataServer, settings: Settings, name: str) -> Path:
    url = server.add(f"/{name}.csv", BODY)
    return ensure_local(url, "csv", settings)


def _local(server: FakeDataServer, settings: Settings, name: str) -> Path:
    return cache_path(server.url(f"/{name}.csv"), "csv", settings)


def _last_used(path: Path, seconds_ago: float) -> None:
    """Set a file's last use explicitly (mtime and atime), so LRU order is deterministic."""
    then = time.time() - seconds_ago
    os.utime(path, (then, then))


def _cached(settings: Settings) -> set[str]:
    return {p.name for p in settings.resolved_cache_dir.iterdir() if p.suffix == ".csv"}


def _names(server: FakeDataServer, settings: Settings, *names: str) -> set[str]:
    return {_local(server, settings, n).name for n in names}


def _cache_bytes(settings: Settings) -> int:
    return sum(p.stat().st_size for p in settings.resolved_cache_dir.glob("*.csv"))


@contextlib.contextmanager
def _locked_elsewhere(lock: Path) -> Iterator[None]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.stdin.close()  # the holder exits, which releases the lock
        holder.wait(timeout=30)
        holder.stdout.close()


def test_downloads_keep_the_cache_within_the_bound(
    data_server: FakeDataServer, settings: Settings
) -> None:
    bounded = _bounded(settings, 2.5)
    for i in range(5):
        path = _fetch(data_server, bounded, f"f{i}")
        assert _cache_bytes(bounded) <= bounded.dataset_cache_max_bytes
        kept = [f"f{i - 1}", f"f{i}"] if i else ["f0"]  # the newest two fit in 2.5 files
        assert _cached(bounded) == _names(data_server, bounded, *kept)
        _last_used(path, DAY_S * (10 - i))  # each file older than the next


def test_eviction_goes_by_last_use(data_server: FakeDataServer, settings: Settings) -> None:
    bounded = _bounded(settings, 2.5)
    for name, days in [("a", 1), ("b", 3), ("c", 2)]:
        _last_used(_fetch(data_server, settings, name), DAY_S * days)
    _fetch(data_server, bounded, "d")  # 4 files over a bound of 2.5: b, then c, go
    assert _cached(bounded) == _names(data_server, bounded, "a", "d")


def test_a_file_used_by_sql_survives(data_server: FakeDataServer, settings: Settings) -> None:
    bounded = _bounded(settings, 2.5)
    old, newer = _fetch(data_server, settings, "old"), _fetch(data_server, settings, "newer")
    _last_used(old, 3 * DAY_S)
    _last_used(newer, 2 * DAY_S)
    assert _fetch(data_server, bounded, "old") == old  # a cache hit, as SQL makes: marks it used
    assert data_server.requests["/old.csv"] == 1
    assert old.stat().st_mtime > newer.stat().st_mtime
    _fetch(data_server, bounded, "third")
    assert _cached(bounded) == _names(data_server, bounded, "old", "third")


def test_a_locked_file_is_not_evicted(data_server: FakeDataServer, settings: Settings) -> None:
    bounded = _bounded(settings, 2.5)
    locked, free = _fetch(data_server, settings, "locked"), _fetch(data_server, settings, "free")
    _last_used(locked, 3 * DAY_S)  # the least recently used, but being re-downloaded elsewhere
    _last_used(free, 2 * DAY_S)
    partial = locked.with_name(f"{locked.name}.0123abcd.part")  # that download's bytes so far
    partial.write_bytes(BODY)
    with _locked_elsewhere(locked.with_suffix(".lock")):
        _fetch(data_server, bounded, "new")
    assert _cached(bounded) == _names(data_server, bounded, "locked", "new")
    assert partial.read_bytes() == BODY


def test_a_file_in_use_by_a_running_query_is_not_evicted(
    data_server: FakeDataServer, settings: Settings
) -> None:
    """Scans are lazy: a query handed a path opens it later, so recent use protects a file."""
    bounded = _bounded(settings, 2.5)
    in_use, idle = _fetch(data_server, settings, "in_use"), _fetch(data_server, settings, "idle")
    _last_used(in_use, settings.query_timeout_s / 2)
    _last_used(idle, 3 * DAY_S)
    _fetch(data_server, bounded, "new")
    assert _cached(bounded) == _names(data_server, bounded, "in_use", "new")


def test_a_download_that_fits_only_by_evicting_a_file_in_use_is_refused(
    data_server: FakeDataServer, settings: Settings
) -> None:
    bounded = _bounded(settings, 1.5)
    in_use = _fetch(data_server, settings, "in_use")
    _last_used(in_use, settings.query_timeout_s / 2)
    with pytest.raises(CacheFull) as refused:
        _fetch(data_server, bounded, "new")
    assert refused.value.error == CACHE_FULL
    assert _cached(bounded) == {in_use.name}
    assert not list(bounded.resolved_cache_dir.glob("*.part*"))


def test_a_file_larger_than_the_whole_cache_is_refused_and_leaves_nothing(
    data_server: FakeDataServer, settings: Settings
) -> None:
    bounded = _bounded(settings, 0.5)
    with pytest.raises(CacheFull):
        _fetch(data_server, bounded, "big")
    assert _cached(bounded) == set()
    assert not list(bounded.resolved_cache_dir.glob("*.part*"))


def test_an_evicted_file_is_downloaded_again(
    data_server: FakeDataServer, settings: Settings
) -> None:
    bounded = _bounded(settings, 1.5)
    first = _fetch(data_server, bounded, "first")
    _last_used(first, 2 * DAY_S)
    _last_used(_fetch(data_server, bounded, "second"), DAY_S)
    assert not first.exists()
    again = _fetch(data_server, bounded, "first")
    assert again == first
    assert data_server.requests["/first.csv"] == 2
    assert scan_local(again, "csv").select(pl.len()).collect().item() == ROWS
    assert _cached(bounded) == {first.name}


def test_an_open_file_stays_readable_after_eviction(
    data_server: FakeDataServer, settings: Settings
) -> None:
    bounded = _bounded(settings, 1.5)
    evicted = _fetch(data_server, bounded, "evicted")
    with evicted.open("rb") as reader:
        _last_used(evicted, DAY_S)
        _fetch(data_server, bounded, "new")
        assert not evicted.exists()
        assert reader.read() == BODY


def test_loading_a_dataset_also_evicts(data_server: FakeDataServer, settings: Settings) -> None:
    bounded = _bounded(settings, 1.5)
    _last_used(_fetch(data_server, settings, "old"), DAY_S)
    assert inspect_dataset(data_server.add("/loaded.csv", BODY), bounded)["row_count"] == ROWS
    assert _cached(bounded) == _names(data_server, bounded, "loaded")


def test_concurrent_downloads_evict_safely(data_server: FakeDataServer, settings: Settings) -> None:
    bounded = _bounded(settings, 4)
    for i in range(4):
        _last_used(_fetch(data_server, settings, f"old{i}"), DAY_S * (i + 1))
    errors: list[BaseException] = []

    def fetch(name: str) -> None:
        try:
            _fetch(data_server, bounded, name)
        except BaseException as failure:  # surfaced by the assertion below
            errors.append(failure)

    threads = [threading.Thread(target=fetch, args=(f"new{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    # Whatever the interleaving, the last sweep sees all four new files and evicts every old one.
    assert _cached(bounded) == _names(data_server, bounded, *(f"new{i}" for i in range(4)))
