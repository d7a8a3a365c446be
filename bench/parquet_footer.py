"""Benchmark: describing a large Parquet file from its footer versus downloading all of it.

Run with `.venv/bin/python bench/parquet_footer.py [--megabytes 128] [--repeat 3]`. It writes
incompressible Parquet, serves it from a loopback FakeDataServer, and records bytes read and
wall time for `inspect_dataset` (Range reads), the whole-file download it avoids, and the
no-Range fallback, in bench/results/parquet_footer.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: import the repo's packages

import polars as pl  # noqa: E402

from actors.dataset_task import inspect_dataset  # noqa: E402
from actors.fetch import GuardedClient  # noqa: E402
from chatdf.settings import Settings  # noqa: E402
from tests.fakes.fake_data_server import FakeDataServer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "parquet_footer.json"
BYTES_PER_ROW = 16  # two uncompressed Int64 columns of hashed (incompressible) values


class _NullSink:
    """Counts bytes instead of storing them, so the download is measured, not the disk."""

    def write(self, data: bytes) -> int:
        return len(data)


def write_parquet(path: Path, megabytes: int) -> int:
    rows = megabytes * 1024 * 1024 // BYTES_PER_ROW
    frame = pl.select(
        id=pl.int_range(0, rows, dtype=pl.Int64),
        noise=pl.int_range(0, rows).hash(seed=7),
    )
    frame.write_parquet(path, compression="uncompressed", statistics=False, row_group_size=1 << 20)
    return rows


def measure(
    server: FakeDataServer, path: str, repeat: int, run: Callable[[], object]
) -> dict[str, float]:
    times, served = [], []
    for _ in range(repeat):
        before = server.bytes_served[path]
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
        served.append(server.bytes_served[path] - before)
    return {"bytes_read": max(served), "seconds_median": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "big.parquet"
        rows = write_parquet(data, args.megabytes)
        size = data.stat().st_size
        settings = Settings(data_dir=scratch, dataset_allow_private_hosts=True)
        server = FakeDataServer().start()
        try:
            ranged = server.add("/ranged.parquet", data)
            whole = server.add("/whole.parquet", data, ranges=False)

            def download() -> None:
                with GuardedClient(settings) as client:
                    client.download(ranged, _NullSink())  # type: ignore[arg-type]

            footer = measure(
                server, "/ranged.parquet", args.repeat, lambda: inspect_dataset(ranged, settings)
            )
            full = measure(server, "/ranged.parquet", args.repeat, download)
            fallback = measure(
                server, "/whole.parquet", 1, lambda: inspect_dataset(whole, settings)
            )
        finally:
            server.stop()

    result = {
        "file": {"bytes": size, "rows": rows, "columns": 2, "compression": "uncompressed"},
        "inspect_dataset_ranged": footer,
        "full_download": full,
        "inspect_dataset_without_range_support": fallback,
        "bytes_fraction": footer["bytes_read"] / size,
        "speedup_vs_download": full["seconds_median"] / footer["seconds_median"],
        "environment": {
            "python": platform.python_version(),
            "polars": pl.__version__,
            "machine": platform.machine(),
            "system": platform.system(),
        },
        "note": "loopback server; a real network widens the gap (latency x bytes)",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
