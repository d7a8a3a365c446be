"""The node-local dataset cache: paths, locks, staleness, reservations, filling and eviction.

Every byte written into the cache directory is covered by a reservation taken first, under one
per-node lock, so the cache never holds more than `DATASET_CACHE_MAX_BYTES` (complete copies
plus downloads in progress), nor one user more than `DATASET_CACHE_USER_MAX_BYTES`, even when a
download's size is unknown up front or it inflates (docs/datasets.md, "Cache").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from actors.fetch import GuardedClient, human_bytes
from actors.formats import SUFFIXES
from chatdf.errors import DatasetError
from chatdf.settings import Settings

LOCK_POLL_S = 0.05
GROW_BYTES = 8 * 1024 * 1024  # a download's reservation grows by this much at a time
RESERVATIONS = ".reservations"  # directory of the cache: one file per download in progress
# Complete cache files only: `.part`/`.ready` (being written) and `.lock` never match.
_CACHE_FILE = re.compile(
    "^[0-9a-f]{64}(?:" + "|".join(re.escape(s) for s in SUFFIXES.values()) + ")$"
)

CACHE_FULL = "There is no room for this dataset in the server's cache right now; try again later"
USER_FULL = "This dataset does not fit in your share of the server's dataset cache ({limit})"
DISK_FULL = "The server's disk is full, so the dataset could not be stored; try again later"


class CacheFull(DatasetError):
    """No room: the cache (or the user's share of it) is full of copies in use."""

    status = 503


def cache_path(url: str, fmt: str, settings: Settings) -> Path:
    """Where a URL's local copy lives: the URL's hash, never its text (no path tricks)."""
    if fmt not in SUFFIXES:
        raise DatasetError(f"Unknown dataset format {fmt!r}")
    digest = hashlib.sha256(url.encode()).hexdigest()
    return settings.resolved_cache_dir / f"{digest}{SUFFIXES[fmt]}"


def owner_tag(user_id: str) -> str:
    """What a copy's lock file records as its owner: a hash, not the user's id."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:16] if user_id else ""


# Staleness and ownership: both recorded in the copy's lock file ----------------------------


def stale(dest: Path, version: float | None) -> bool:
    """The copy was filled before the content version the database holds (or we cannot tell)."""
    if version is None:
        return False
    filled = _lock_record(dest)[0]
    return filled is None or filled < version


def _lock_record(dest: Path) -> tuple[float | None, str]:
    """(when the copy was downloaded, its owner tag): written in its lock file, which lives as
    long as the URL's cache entry (never deleted: see docs/datasets.md)."""
    try:
        fields = dest.with_suffix(".lock").read_text().split()
        return (float(fields[0]) if fields else None), (fields[1] if len(fields) > 1 else "")
    except (FileNotFoundError, ValueError):
        return None, ""


# Locks ---------------------------------------------------------------------------------


@contextlib.contextmanager
def cache_lock(dest: Path, client: GuardedClient) -> Iterator[None]:
    """One downloader per URL per node; the others wait (within the time budget) and reuse."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.with_suffix(".lock").open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                client.left_s()  # raises once the total budget is spent
                time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim(dest: Path) -> bool:
    """Touch a cached copy under its lock, shared; False if absent or its lock is busy."""
    try:
        handle = dest.with_suffix(".lock").open("a")
    except FileNotFoundError:  # no cache directory yet
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # being downloaded or evicted: the caller waits its turn
            return False
        try:
            return touch(dest)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def touch(path: Path) -> bool:
    """Mark a cached file as used now (eviction goes by mtime); False if it is not there."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def _sweep_lock(cache_dir: Path) -> Iterator[None]:
    """One reservation or eviction at a time per node (`flock` on the cache directory)."""
    descriptor = os.open(cache_dir, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


# Reservations --------------------------------------------------------------------------


class Reservation:
    """Bytes a download may write into the cache; held (flock) by the process writing them.

    A reservation whose process died is unlocked: the next reserver deletes it and that
    download's leftover `.part`/`.ready` files.
    """

    def __init__(self, cache_dir: Path, settings: Settings, owner: str) -> None:
        self.cache_dir = cache_dir
        self.settings = settings
        self.owner = owner
        self.tag = uuid.uuid4().hex
        self.bytes = 0
        self.written = 0
        (cache_dir / RESERVATIONS).mkdir(parents=True, exist_ok=True)
        self.path = cache_dir / RESERVATIONS / self.tag
        with _sweep_lock(cache_dir):  # sweepers see it only once it is held
            self._handle = self.path.open("w")
            fcntl.flock(self._handle, fcntl.LOCK_EX)
            self._write()

    def _write(self) -> None:
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"{self.bytes} {self.owner}\n")
        self._handle.flush()

    def wrote(self, n: int) -> None:
        """Counts `n` more bytes written; grows the reservation first when they exceed it."""
        if self.written + n > self.bytes:
            self.grow(self.written + n)
        self.written += n

    def grow(self, need: int) -> None:
        """At least `need` bytes reserved, or CacheFull. Takes up to GROW_BYTES more while
        there is free room; evicts unused copies only for exactly what is needed."""
        with _sweep_lock(self.cache_dir):
            free = _headroom(self.cache_dir, self.settings, self.owner, self)
            if need - self.bytes <= free:
                self.bytes += min(free, need - self.bytes + GROW_BYTES)
            elif _make_room(self.cache_dir, self.settings, self.owner, need - self.bytes, self):
                self.bytes = need
            else:
                raise _no_room(self.settings, self.owner, need, self.cache_dir, self)
            self._write()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._handle.close()  # closing releases the lock


@dataclass
class _Usage:
    total: int
    mine: int
    evictable: list[tuple[float, int, Path, str]]  # (last use, size, path, owner) oldest first


def _usage(cache_dir: Path, owner: str, settings: Settings, me: Reservation | None) -> _Usage:
    """Bytes held by complete copies and reservations (the dead ones are cleared on the way)."""
    used_before = time.time() - _in_use_s(settings)
    total = mine = 0
    evictable: list[tuple[float, int, Path, str]] = []
    for path in cache_dir.iterdir():
        if not _CACHE_FILE.match(path.name):
            continue
        try:
            info = path.stat()
        except FileNotFoundError:  # refreshed or deleted since the listing
            continue
        copy_owner = _lock_record(path)[1]
        total += info.st_size
        mine += info.st_size if owner and copy_owner == owner else 0
        if info.st_mtime <= used_before:
            evictable.append((info.st_mtime, info.st_size, path, copy_owner))
    for held, held_owner in _reservations(cache_dir, me):
        total += held
        mine += held if owner and held_owner == owner else 0
    evictable.sort()
    return _Usage(total, mine, evictable)


def _reservations(cache_dir: Path, me: Reservation | None) -> Iterator[tuple[int, str]]:
    folder = cache_dir / RESERVATIONS
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if me is not None and path == me.path:
            yield me.bytes, me.owner
            continue
        try:
            with path.open("r+") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # alive: count it
                    fields = handle.read().split() or ["0"]
                    yield int(fields[0]), (fields[1] if len(fields) > 1 else "")
                    continue
                _clear_dead(cache_dir, path)
        except (FileNotFoundError, ValueError):
            continue


def _clear_dead(cache_dir: Path, reservation: Path) -> None:
    """A reservation nobody holds: its process died mid-download. Its files go with it."""
    for leftover in cache_dir.glob(f"*.{reservation.name}.part*"):
        leftover.unlink(missing_ok=True)
    reservation.unlink(missing_ok=True)


def _headroom(cache_dir: Path, settings: Settings, owner: str, me: Reservation | None) -> int:
    """Bytes that fit both bounds now, without evicting anything."""
    usage = _usage(cache_dir, owner, settings, me)
    free = settings.dataset_cache_max_bytes - usage.total
    user_max = settings.dataset_cache_user_max_bytes
    if owner and user_max > 0:
        free = min(free, user_max - usage.mine)
    return max(free, 0)


def _make_room(
    cache_dir: Path, settings: Settings, owner: str, more: int, me: Reservation | None
) -> bool:
    """Evicts least recently used unpinned copies until `more` bytes fit both bounds."""
    if more <= 0:
        return True
    usage = _usage(cache_dir, owner, settings, me)
    user_max = settings.dataset_cache_user_max_bytes
    used_before = time.time() - _in_use_s(settings)
    for _, _, path, copy_owner in usage.evictable:
        over_total = usage.total + more > settings.dataset_cache_max_bytes
        over_user = bool(owner) and user_max > 0 and usage.mine + more > user_max
        if not over_total and not over_user:
            break
        if over_user and not over_total and copy_owner != owner:
            continue  # over the user's share only: only their own copies make room
        freed = _evict_one(path, used_before)
        usage.total -= freed
        usage.mine -= freed if copy_owner == owner else 0
    fits_total = usage.total + more <= settings.dataset_cache_max_bytes
    fits_user = not owner or user_max <= 0 or usage.mine + more <= user_max
    return fits_total and fits_user


def _no_room(
    settings: Settings, owner: str, need: int, cache_dir: Path, me: Reservation | None
) -> CacheFull:
    usage = _usage(cache_dir, owner, settings, me)
    user_max = settings.dataset_cache_user_max_bytes
    details = f"needs {human_bytes(need)}; the cache holds {human_bytes(usage.total)}"
    if owner and user_max > 0 and usage.mine - (me.bytes if me else 0) + need > user_max:
        return CacheFull(USER_FULL.format(limit=human_bytes(user_max)), details)
    return CacheFull(CACHE_FULL, f"{details} of {human_bytes(settings.dataset_cache_max_bytes)}")


class CountingSink:
    """A file being written into the cache, every byte counted against a reservation."""

    def __init__(self, target: IO[bytes], reservation: Reservation) -> None:
        self.target = target
        self.reservation = reservation

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        self.reservation.wrote(size)
        return self.target.write(data)


@contextlib.contextmanager
def disk_full_is_an_error() -> Iterator[None]:
    """ENOSPC (the disk itself is full, whatever the bound says) is a dataset error."""
    try:
        yield
    except OSError as failure:
        if failure.errno == errno.ENOSPC:
            raise DatasetError(DISK_FULL, "no space left on the cache's file system") from None
        raise


# Eviction ------------------------------------------------------------------------------


def _in_use_s(settings: Settings) -> float:
    """How long after its last use a file may still be read: until its query or load ends."""
    return max(settings.query_timeout_s, settings.dataset_total_timeout_s)


def _evict_one(path: Path, used_before: float) -> int:
    """Delete a cache file if nobody holds its lock and it was last used before `used_before`.

    Returns the bytes freed (0 when the file was kept or already gone). Deleting a file a
    reader already has open is safe: POSIX keeps it readable until the descriptor closes.
    """
    with path.with_suffix(".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # being downloaded, or being handed to a query right now
            return 0
        try:
            # Every touch holds this lock (shared in `claim`, exclusive after a wait), so the
            # mtime read here cannot go stale before the unlink.
            info = path.stat()
            if info.st_mtime > used_before:
                return 0
            path.unlink()
            return info.st_size
        except FileNotFoundError:  # another process deleted it first
            return 0
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish(ready: Path, dest: Path, reservation: Reservation, filled_at: float) -> None:
    """Moves a finished download into place and hands its bytes from the reservation to the
    copy, in one step under the node's lock (the caller holds `dest`'s own lock)."""
    with _sweep_lock(dest.parent):
        os.replace(ready, dest)  # readers only ever see complete files
        dest.with_suffix(".lock").write_text(f"{filled_at!r} {reservation.owner}\n")
        reservation.release()
