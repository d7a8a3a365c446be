"""Dataset loading inside Ray tasks: inspect a URL (format, rows, schema), keep local copies."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from actors.fetch import CHUNK_BYTES, GuardedClient, Head, too_large, validate_url
from actors.formats import (
    PARQUET_CORRUPT,
    SNIFF_BYTES,
    SUFFIXES,
    Sniffed,
    describe_schema,
    parquet_footer_length,
    parquet_metadata,
    sniff_format,
)
from chatdf.errors import DatasetError
from chatdf.settings import Settings, sample_file

FORMAT_LABELS = {
    "parquet": "Parquet",
    "csv": "CSV",
    "tsv": "TSV",
    "ndjson": "NDJSON",
    "ipc": "Arrow IPC",
}
PARQUET_TAIL_BYTES = 64 * 1024  # one read usually holds the whole footer
INFER_SCHEMA_ROWS = 10_000
LOCK_POLL_S = 0.05
# Complete cache files only: `.part`/`.ready` (being written) and `.lock` never match.
_CACHE_FILE = re.compile(
    "^[0-9a-f]{64}(?:" + "|".join(re.escape(s) for s in SUFFIXES.values()) + ")$"
)


def inspect_dataset(
    url: str, settings: Settings, *, client: GuardedClient | None = None
) -> dict[str, Any]:
    """Validate, fetch as little as possible, and describe a dataset URL.

    Returns {"format", "row_count", "column_count", "schema": [{"name", "type"}]}; raises
    DatasetError (DatasetUnreachable when the URL did not answer as it should).
    """
    validate_url(url)
    if url in settings.sample_urls:  # our own bundled file: read it here, fetch nothing
        return inspect_local(sample_path())
    read_at = time.time()  # the dataset's content version: what every node's copy must match
    with _client(settings, client) as guarded:
        head = guarded.head(url, SNIFF_BYTES)
        sniffed = sniff_format(head.first_bytes, _name_of(url))
        if sniffed.format == "parquet" and head.ranges and head.total_size:
            rows, schema = _parquet_by_ranges(guarded, head)
            cache_path(url, "parquet", settings).unlink(missing_ok=True)  # a copy may be stale
        else:
            # Whole-file formats (and Parquet from servers without Range) are read locally.
            path = _fill_cache(guarded, url, sniffed.format, settings)
            rows, schema = _local_stats(path, sniffed.format)
    return {
        "read_at": read_at,
        "format": sniffed.format,
        "row_count": rows,
        "column_count": len(schema),
        "schema": describe_schema(schema),
    }


def ensure_local(
    url: str,
    fmt: str,
    settings: Settings,
    *,
    client: GuardedClient | None = None,
    version: float | None = None,
) -> Path:
    """A node-local copy of the dataset (downloaded through the guard once, then reused).

    `version` is when the dataset's content was last read for the database (a load or a
    refresh, on whichever node): a copy filled before that is stale and fetched again, so a
    refresh on one node reaches the copies on every other. Each call marks the copy as just
    used, so the cache evicts least recently used files.
    """
    validate_url(url)
    if url in settings.sample_urls:
        return sample_path()
    dest = cache_path(url, fmt, settings)
    if _claim(dest) and not _stale(dest, version):
        return dest
    with _client(settings, client) as guarded, _cache_lock(dest, guarded):
        if _touch(dest) and not _stale(dest, version):  # filled by another caller meanwhile
            return dest
        return _fill_cache(guarded, url, fmt, settings, locked=True)


def _stale(dest: Path, version: float | None) -> bool:
    """The copy was filled before the content version the database holds (or we cannot tell)."""
    if version is None:
        return False
    filled = _filled_at(dest)
    return filled is None or filled < version


def _filled_at(dest: Path) -> float | None:
    """When the copy was downloaded: recorded in its lock file, which lives as long as the URL's
    cache entry (never deleted: see docs/datasets.md)."""
    try:
        text = dest.with_suffix(".lock").read_text().strip()
        return float(text) if text else None
    except (FileNotFoundError, ValueError):
        return None


def scan_local(path: Path, fmt: str) -> pl.LazyFrame:
    """A lazy scan of a cached file; the only place Polars opens dataset files."""
    if not isinstance(path, Path):  # a str could be a URL, and Polars would fetch it unguarded
        raise TypeError(f"scan_local takes a local Path, not {type(path).__name__}")
    if fmt == "parquet":
        return pl.scan_parquet(path, glob=False)
    if fmt in ("csv", "tsv"):
        return pl.scan_csv(
            path,
            separator="\t" if fmt == "tsv" else ",",
            glob=False,
            infer_schema_length=INFER_SCHEMA_ROWS,
            encoding="utf8-lossy",
            try_parse_dates=True,
        )
    if fmt == "ndjson":
        return pl.scan_ndjson(path, infer_schema_length=INFER_SCHEMA_ROWS)
    if fmt == "ipc":
        return pl.scan_ipc(path, glob=False)
    raise DatasetError(f"Unknown dataset format {fmt!r}")


def inspect_local(path: Path) -> dict[str, Any]:
    """Describe a file already on this node (the bundled sample); never touches the network."""
    with path.open("rb") as source:
        fmt = sniff_format(source.read(SNIFF_BYTES), path.name).format
    rows, schema = _local_stats(path, fmt)
    return {
        "format": fmt,
        "row_count": rows,
        "column_count": len(schema),
        "schema": describe_schema(schema),
    }


def cache_path(url: str, fmt: str, settings: Settings) -> Path:
    """Where a URL's local copy lives: the URL's hash, never its text (no path tricks)."""
    if fmt not in SUFFIXES:
        raise DatasetError(f"Unknown dataset format {fmt!r}")
    digest = hashlib.sha256(url.encode()).hexdigest()
    return settings.resolved_cache_dir / f"{digest}{SUFFIXES[fmt]}"


@contextlib.contextmanager
def _client(settings: Settings, given: GuardedClient | None) -> Iterator[GuardedClient]:
    if given is not None:
        yield given
        return
    with GuardedClient(settings) as owned:
        yield owned


def _name_of(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1].lower()


def _parquet_by_ranges(client: GuardedClient, head: Head) -> tuple[int, pl.Schema]:
    size = head.total_size or 0
    tail_len = min(size, PARQUET_TAIL_BYTES)
    if len(head.first_bytes) >= size:  # the whole file came with the first read
        tail = head.first_bytes[size - tail_len : size]
    else:
        tail = client.read_range(head.url, size - tail_len, size - 1)
    footer_len = parquet_footer_length(tail, size)
    if footer_len > client.settings.dataset_max_bytes:
        raise too_large(client.settings.dataset_max_bytes, footer_len)
    if footer_len + 8 > len(tail):  # a wide file: fetch exactly the rest of the footer
        tail = client.read_range(head.url, size - footer_len - 8, size - 1)
    return parquet_metadata(tail[-(footer_len + 8) :])


def _fill_cache(
    client: GuardedClient, url: str, fmt: str, settings: Settings, *, locked: bool = False
) -> Path:
    """Download the URL into the cache (gunzipped, IPC streams rewritten as files), atomically."""
    dest = cache_path(url, fmt, settings)
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = contextlib.nullcontext() if locked else _cache_lock(dest, client)
    raw = dest.with_name(f"{dest.name}.{uuid.uuid4().hex}.part")
    ready = raw.with_name(raw.name + ".ready")
    with lock:
        filled_at = time.time()  # the content is as of this moment (or later)
        try:
            with raw.open("wb") as sink:
                client.download(url, sink)
            with raw.open("rb") as source:
                sniffed = sniff_format(source.read(SNIFF_BYTES), _name_of(url))
            if sniffed.format != fmt:
                raise DatasetError(
                    "The dataset file changed format since it was loaded",
                    f"expected {fmt}, found {sniffed.format}",
                )
            _finish(raw, ready, sniffed, settings.dataset_max_bytes)
            os.replace(ready, dest)  # readers only ever see complete files
            dest.with_suffix(".lock").write_text(f"{filled_at!r}\n")  # we hold its lock
        finally:
            raw.unlink(missing_ok=True)
            ready.unlink(missing_ok=True)
        _evict_lru(dest, settings)
    return dest


def _finish(raw: Path, ready: Path, sniffed: Sniffed, max_bytes: int) -> None:
    if sniffed.gzip:
        _gunzip(raw, ready, max_bytes)
    elif sniffed.ipc_stream:
        _ipc_stream_to_file(raw, ready)
    else:
        os.replace(raw, ready)


def _gunzip(source: Path, target: Path, max_bytes: int) -> None:
    """Decompress (all gzip members) with the size cap applied to the output: no zip bombs."""
    written = 0
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with source.open("rb") as src, target.open("wb") as dst:
        try:
            while chunk := src.read(CHUNK_BYTES):
                while chunk:
                    data = inflater.decompress(chunk)
                    written += len(data)
                    if written > max_bytes:
                        raise too_large(max_bytes)
                    dst.write(data)
                    chunk = b""
                    if inflater.eof and inflater.unused_data:  # another gzip member follows
                        chunk = inflater.unused_data
                        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        except zlib.error as bad:
            raise DatasetError("The gzip file is truncated or corrupt", str(bad)) from None
    if not inflater.eof:
        raise DatasetError("The gzip file is truncated or corrupt", "the stream ends early")


def _ipc_stream_to_file(source: Path, target: Path) -> None:
    # Polars scans only the IPC file format; rewriting batch by batch keeps memory flat.
    try:
        with (
            pa.OSFile(str(source)) as src,
            pa.ipc.open_stream(src) as reader,
            pa.OSFile(str(target), "wb") as sink,
            pa.ipc.new_file(sink, reader.schema) as writer,
        ):
            for batch in reader:
                writer.write_batch(batch)
    except (pa.ArrowException, OSError) as bad:
        raise DatasetError("The Arrow IPC file is truncated or corrupt", str(bad)) from None


def _local_stats(path: Path, fmt: str) -> tuple[int, pl.Schema]:
    try:
        if fmt == "parquet":
            return pq.read_metadata(path).num_rows, pl.Schema(pl.read_parquet_schema(path))
        frame = scan_local(path, fmt)
        schema = frame.collect_schema()
        rows = int(frame.select(pl.len()).collect().item())
        return rows, schema
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError) as bad:
        path.unlink(missing_ok=True)  # an unreadable copy must not be served to SQL later
        if fmt == "parquet":
            raise DatasetError(PARQUET_CORRUPT, str(bad)) from None
        label = FORMAT_LABELS[fmt]
        raise DatasetError(f"The file could not be read as {label}", str(bad)) from None


@contextlib.contextmanager
def _cache_lock(dest: Path, client: GuardedClient) -> Iterator[None]:
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


def _claim(dest: Path) -> bool:
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
            return _touch(dest)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _touch(path: Path) -> bool:
    """Mark a cached file as used now (eviction goes by mtime); False if it is not there."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def _in_use_s(settings: Settings) -> float:
    """How long after its last use a file may still be read: until its query or load ends."""
    return max(settings.query_timeout_s, settings.dataset_total_timeout_s)


def _evict_lru(keep: Path, settings: Settings) -> None:
    """Delete least recently used cache files until they total at most the bound.

    Never `keep` (the file just downloaded, even when it alone is over the bound), a file whose
    lock another process holds, or a file used within `_in_use_s`: `scan_local` is lazy, so a
    query opens its file only when it runs, and again for the count; a file deleted before that
    would fail the query. Deleting a file a reader already has open is safe: POSIX keeps an
    unlinked file readable through open descriptors until they close.
    """
    cache_dir = keep.parent
    used_before = time.time() - _in_use_s(settings)
    with _sweep_lock(cache_dir):
        entries = []
        for path in cache_dir.iterdir():
            if not _CACHE_FILE.match(path.name):
                continue
            try:
                info = path.stat()
            except FileNotFoundError:  # refreshed or deleted since the listing
                continue
            entries.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, _, path in sorted(entries):
            if total <= settings.dataset_cache_max_bytes:
                break
            if path != keep:
                total -= _evict_one(path, used_before)


def _evict_one(path: Path, used_before: float) -> int:
    """Delete a cache file if nobody holds its lock and it was last used before `used_before`.

    Returns the bytes freed (0 when the file was kept or already gone).
    """
    with path.with_suffix(".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # being downloaded, or being handed to a query right now
            return 0
        try:
            # Every touch holds this lock (shared in `_claim`, exclusive after a wait), so the
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


@contextlib.contextmanager
def _sweep_lock(cache_dir: Path) -> Iterator[None]:
    """One eviction sweep per node at a time, so two sweepers never evict for the same excess.

    The lock is on the directory itself (no extra file); a sweep only stats and unlinks.
    """
    descriptor = os.open(cache_dir, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def sample_path() -> Path:
    """The bundled sample dataset (sales by region/product/month), shipped in the package."""
    return sample_file()
