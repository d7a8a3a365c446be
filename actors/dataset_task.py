"""Dataset loading inside Ray tasks: inspect a URL (format, rows, schema), keep local copies."""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from actors.cache import (
    CountingSink,
    Reservation,
    cache_lock,
    cache_path,
    claim,
    disk_full_is_an_error,
    owner_tag,
    publish,
    stale,
    touch,
)
from actors.fetch import CHUNK_BYTES, GuardedClient, Head, too_large, validate_url
from actors.formats import (
    PARQUET_CORRUPT,
    SNIFF_BYTES,
    Sniffed,
    describe_schema,
    parquet_footer_length,
    parquet_metadata,
    sniff_format,
)
from actors.scan import scan_local
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


def inspect_dataset(
    url: str, settings: Settings, *, client: GuardedClient | None = None, owner: str = ""
) -> dict[str, Any]:
    """Validate, fetch as little as possible, and describe a dataset URL.

    `owner`: the user whose share of the cache a download counts against (empty: none).

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
            path = _fill_cache(guarded, url, sniffed.format, settings, owner=owner)
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
    owner: str = "",
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
    if claim(dest) and not stale(dest, version):
        return dest
    with _client(settings, client) as guarded, cache_lock(dest, guarded):
        if touch(dest) and not stale(dest, version):  # filled by another caller meanwhile
            return dest
        return _fill_cache(guarded, url, fmt, settings, locked=True, owner=owner)


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
    client: GuardedClient,
    url: str,
    fmt: str,
    settings: Settings,
    *,
    locked: bool = False,
    owner: str = "",
) -> Path:
    """Download the URL into the cache (gunzipped, IPC streams rewritten as files), atomically,
    every byte written inside a reservation (actors/cache.py): past the cache's bound or the
    owner's share, or on a full disk, it stops with a DatasetError and leaves nothing behind."""
    dest = cache_path(url, fmt, settings)
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = contextlib.nullcontext() if locked else cache_lock(dest, client)
    with lock, disk_full_is_an_error():
        reservation = Reservation(dest.parent, settings, owner_tag(owner))
        raw = dest.with_name(f"{dest.name}.{reservation.tag}.part")
        ready = raw.with_name(raw.name + ".ready")
        filled_at = time.time()  # the content is as of this moment (or later)
        try:
            with raw.open("wb") as sink:
                client.download(url, CountingSink(sink, reservation))  # type: ignore[arg-type]
            with raw.open("rb") as source:
                sniffed = sniff_format(source.read(SNIFF_BYTES), _name_of(url))
            if sniffed.format != fmt:
                raise DatasetError(
                    "The dataset file changed format since it was loaded",
                    f"expected {fmt}, found {sniffed.format}",
                )
            _finish(raw, ready, sniffed, settings.dataset_max_bytes, reservation)
            publish(ready, dest, reservation, filled_at)  # we hold its lock
        finally:
            raw.unlink(missing_ok=True)
            ready.unlink(missing_ok=True)
            reservation.release()
    return dest


def _finish(
    raw: Path, ready: Path, sniffed: Sniffed, max_bytes: int, reservation: Reservation
) -> None:
    if sniffed.gzip:
        _gunzip(raw, ready, max_bytes, reservation)
    elif sniffed.ipc_stream:
        # The rewrite is about the stream's size (plus a footer): reserved before it is written.
        reservation.wrote(raw.stat().st_size + CHUNK_BYTES)
        _ipc_stream_to_file(raw, ready)
    else:
        os.replace(raw, ready)


def _gunzip(source: Path, target: Path, max_bytes: int, reservation: Reservation) -> None:
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
                    reservation.wrote(len(data))
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


def sample_path() -> Path:
    """The bundled sample dataset (sales by region/product/month), shipped in the package."""
    return sample_file()
