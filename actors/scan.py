"""Polars' lazy scan of a node-local dataset file: the only place Polars opens dataset files.

Its own module, with Polars as its only heavy import: the SQL sandbox's fork server
(`actors.sql_sandbox`) imports it, and every query process is a fork of that server, so what
this imports is what each query's fork copies (page tables) and touches (copy-on-write).
Importing it from `actors.dataset_task` brought PyArrow, NumPy, httpx and pydantic along:
113 MB RSS against 45 for Polars alone.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from chatdf.errors import DatasetError

INFER_SCHEMA_ROWS = 10_000


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
