"""inspect_dataset, ensure_local and the Ray task, over real files served from loopback."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import ray

from actors.cache import cache_path
from actors.dataset_task import (
    ensure_local,
    inspect_dataset,
    inspect_local,
    sample_path,
)
from actors.fetch import DatasetUnreachable
from actors.formats import NOT_SUPPORTED, PARQUET_CORRUPT
from actors.scan import scan_local
from actors.tasks import load_dataset_task
from chatdf.errors import DatasetError
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer

SALES = pl.DataFrame(
    {
        "day": [dt.date(2025, 1, d) for d in range(1, 11)],
        "region": ["North", "South"] * 5,
        "units": list(range(10)),
        "price": [1.5 * n for n in range(10)],
        "ok": [True, False] * 5,
    }
)
SALES_SCHEMA = [
    {"name": "day", "type": "Date"},
    {"name": "region", "type": "Text"},
    {"name": "units", "type": "Integer"},
    {"name": "price", "type": "Float"},
    {"name": "ok", "type": "Boolean"},
]


def _encode(write: str, frame: pl.DataFrame = SALES, **options: object) -> bytes:
    buffer = io.BytesIO()
    getattr(frame, write)(buffer, **options)
    return buffer.getvalue()


ENCODINGS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "parquet": ("parquet", lambda: _encode("write_parquet")),
    "csv": ("csv", lambda: _encode("write_csv")),
    "tsv": ("tsv", lambda: _encode("write_csv", separator="\t")),
    "csv.gz": ("csv", lambda: gzip.compress(_encode("write_csv"))),
    "tsv.gz": ("tsv", lambda: gzip.compress(_encode("write_csv", separator="\t"))),
    "ndjson": ("ndjson", lambda: _encode("write_ndjson")),
    "ipc": ("ipc", lambda: _encode("write_ipc")),
    "ipc-stream": ("ipc", lambda: _encode("write_ipc_stream")),
}


@pytest.fixture(scope="session")
def big_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """>= 100 MB of incompressible Parquet (hashed integers), written once per session."""
    path = tmp_path_factory.mktemp("big") / "big.parquet"
    rows = 7_000_000
    frame = pl.select(
        id=pl.int_range(0, rows, dtype=pl.Int64),
        noise=pl.int_range(0, rows).hash(seed=7),
    )
    frame.write_parquet(path, compression="uncompressed", statistics=False, row_group_size=1 << 20)
    assert path.stat().st_size >= 100 * 1024 * 1024
    return path


@pytest.mark.parametrize("kind", list(ENCODINGS))
def test_inspect_every_format(data_server: FakeDataServer, settings: Settings, kind: str) -> None:
    fmt, encode = ENCODINGS[kind]
    url = data_server.add(f"/sales-{kind}", encode())  # no extension: the bytes decide
    before = time.time()
    described = inspect_dataset(url, settings)
    assert before <= described.pop("read_at") <= time.time()  # the content version
    expected_schema = SALES_SCHEMA
    if fmt == "ndjson":  # JSON has no date type: the day stays text
        expected_schema = [{"name": "day", "type": "Text"}, *SALES_SCHEMA[1:]]
    assert described == {
        "format": fmt,
        "row_count": 10,
        "column_count": 5,
        "schema": expected_schema,
    }


@pytest.mark.parametrize("kind", list(ENCODINGS))
def test_ensure_local_then_scan_local(
    data_server: FakeDataServer, settings: Settings, kind: str
) -> None:
    fmt, encode = ENCODINGS[kind]
    url = data_server.add(f"/sales-{kind}", encode())
    path = ensure_local(url, fmt, settings)
    assert path.parent == settings.resolved_cache_dir
    frame = scan_local(path, fmt).select(pl.col("units").sum()).collect()
    assert frame.item() == 45


def test_small_parquet_is_described_from_one_read(
    data_server: FakeDataServer, settings: Settings
) -> None:
    url = data_server.add("/sales.parquet", _encode("write_parquet"))
    inspect_dataset(url, settings)
    assert data_server.requests["/sales.parquet"] == 1  # the first 64 KiB held the whole file
    assert not cache_path(url, "parquet", settings).exists()


def test_large_parquet_reads_under_one_percent(
    data_server: FakeDataServer, settings: Settings, big_parquet: Path
) -> None:
    url = data_server.add("/big.parquet", big_parquet)
    described = inspect_dataset(url, settings)
    assert described["row_count"] == 7_000_000
    assert described["schema"] == [
        {"name": "id", "type": "Integer"},
        {"name": "noise", "type": "Integer"},
    ]
    assert data_server.bytes_served["/big.parquet"] < big_parquet.stat().st_size / 100


def test_parquet_without_range_support_falls_back_to_a_bounded_download(
    data_server: FakeDataServer, settings: Settings
) -> None:
    data = _encode("write_parquet")
    url = data_server.add("/sales.parquet", data, ranges=False)
    assert inspect_dataset(url, settings)["row_count"] == 10
    assert cache_path(url, "parquet", settings).read_bytes() == data


def test_parquet_without_range_support_over_the_size_cap(
    data_server: FakeDataServer, settings: Settings, big_parquet: Path
) -> None:
    url = data_server.add("/big.parquet", big_parquet, ranges=False)
    capped = settings.model_copy(update={"dataset_max_bytes": 10 * 1024 * 1024})
    with pytest.raises(DatasetError) as refused:
        inspect_dataset(url, capped)
    assert refused.value.error == "The dataset is larger than the 10 MiB limit"
    assert not list(settings.resolved_cache_dir.glob("*.part"))


@pytest.mark.parametrize("ranges", [True, False], ids=["ranged", "whole"])
@pytest.mark.parametrize("cut", [1, 200, 1000])
def test_truncated_parquet(
    data_server: FakeDataServer, settings: Settings, ranges: bool, cut: int
) -> None:
    data = _encode("write_parquet")
    url = data_server.add("/cut.parquet", data[:-cut], ranges=ranges)
    with pytest.raises(DatasetError) as refused:
        inspect_dataset(url, settings)
    assert refused.value.error == PARQUET_CORRUPT
    assert not cache_path(url, "parquet", settings).exists()


def test_truncated_gzip(data_server: FakeDataServer, settings: Settings) -> None:
    data = gzip.compress(_encode("write_csv"))
    url = data_server.add("/cut.csv.gz", data[:-12])
    with pytest.raises(DatasetError) as refused:
        inspect_dataset(url, settings)
    assert refused.value.error == "The gzip file is truncated or corrupt"


def test_gzip_bomb_is_capped_on_the_decompressed_size(
    data_server: FakeDataServer, settings: Settings
) -> None:
    bomb = gzip.compress(b"a,b\n" + b"1,2\n" * 2_000_000)  # 8 MB of text, a few KB on the wire
    url = data_server.add("/bomb.csv.gz", bomb)
    capped = settings.model_copy(update={"dataset_max_bytes": 1024 * 1024})
    with pytest.raises(DatasetError) as refused:
        inspect_dataset(url, capped)
    assert refused.value.error == "The dataset is larger than the 1 MiB limit"


@pytest.mark.parametrize(
    "body",
    [b"\x89PNG\r\n\x1a\n" + bytes(500), b"<!doctype html><title>Hi</title>"],
    ids=["png", "html"],
)
def test_not_a_data_file(data_server: FakeDataServer, settings: Settings, body: bytes) -> None:
    url = data_server.add("/data.csv", body)
    with pytest.raises(DatasetError) as refused:
        inspect_dataset(url, settings)
    assert refused.value.error == NOT_SUPPORTED


def test_empty_file(data_server: FakeDataServer, settings: Settings) -> None:
    with pytest.raises(DatasetError) as refused:
        inspect_dataset(data_server.add("/empty.csv", b""), settings)
    assert refused.value.error == "The dataset file is empty"


def test_bad_scheme(settings: Settings) -> None:
    with pytest.raises(DatasetError) as refused:
        inspect_dataset("ftp://example.com/data.csv", settings)
    assert refused.value.error == "Invalid URL format"


def test_unreachable_host(settings: Settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DatasetUnreachable) as failed:
        inspect_dataset(f"http://127.0.0.1:{port}/data.csv", settings)
    assert failed.value.error == "Could not reach the dataset URL: connection refused"


def test_not_found(data_server: FakeDataServer, settings: Settings) -> None:
    with pytest.raises(DatasetUnreachable) as failed:
        inspect_dataset(data_server.url("/nothing.parquet"), settings)
    assert failed.value.error == "The dataset URL answered 404 Not Found"


def test_timeout(data_server: FakeDataServer, settings: Settings) -> None:
    url = data_server.add("/slow.csv", _encode("write_csv"), stall=True)
    quick = settings.model_copy(update={"dataset_read_timeout_s": 0.2})
    with pytest.raises(DatasetUnreachable) as failed:
        inspect_dataset(url, quick)
    assert failed.value.error == "The dataset URL did not answer within 0.2 seconds"


def test_ensure_local_downloads_once(data_server: FakeDataServer, settings: Settings) -> None:
    url = data_server.add("/sales.csv", _encode("write_csv"))
    first = ensure_local(url, "csv", settings)
    assert ensure_local(url, "csv", settings) == first
    assert data_server.requests["/sales.csv"] == 1


def test_ensure_local_is_safe_under_concurrent_callers(
    data_server: FakeDataServer, settings: Settings
) -> None:
    url = data_server.add("/sales.csv", _encode("write_csv"))
    results: list[Path] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            results.append(ensure_local(url, "csv", settings))
        except BaseException as failure:  # surfaced by the assertion below
            errors.append(failure)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 1
    assert data_server.requests["/sales.csv"] == 1
    assert sorted(p.name for p in settings.resolved_cache_dir.iterdir()) == sorted(
        [results[0].name, results[0].with_suffix(".lock").name, ".reservations"]
    )
    assert not list((settings.resolved_cache_dir / ".reservations").iterdir())


def test_ensure_local_refuses_a_changed_format(
    data_server: FakeDataServer, settings: Settings
) -> None:
    url = data_server.add("/sales", _encode("write_csv"))
    with pytest.raises(DatasetError) as refused:
        ensure_local(url, "parquet", settings)
    assert refused.value.error == "The dataset file changed format since it was loaded"


def test_inspect_refreshes_the_local_copy(data_server: FakeDataServer, settings: Settings) -> None:
    url = data_server.add("/sales.csv", _encode("write_csv"))
    assert inspect_dataset(url, settings)["row_count"] == 10
    data_server.add("/sales.csv", _encode("write_csv", SALES.head(3)))
    assert inspect_dataset(url, settings)["row_count"] == 3
    local = ensure_local(url, "csv", settings)
    assert scan_local(local, "csv").select(pl.len()).collect().item() == 3


def test_scan_local_refuses_anything_but_a_local_path() -> None:
    with pytest.raises(TypeError):
        scan_local("http://169.254.169.254/latest.parquet", "parquet")  # type: ignore[arg-type]


def test_bundled_sample() -> None:
    described = inspect_local(sample_path())
    assert (described["format"], described["row_count"], described["column_count"]) == (
        "parquet",
        288,
        8,
    )
    assert described["schema"][0] == {"name": "month", "type": "Date"}


def test_ray_task(data_server: FakeDataServer, settings: Settings, ray_session: None) -> None:
    ok = data_server.add("/sales.parquet", _encode("write_parquet"))
    described = ray.get(load_dataset_task.remote(ok, settings))
    assert described["row_count"] == 10
    with pytest.raises(DatasetError) as failed:
        ray.get(load_dataset_task.remote(data_server.url("/missing.csv"), settings))
    assert failed.value.error == "The dataset URL answered 404 Not Found"
    assert isinstance(failed.value, DatasetUnreachable)
