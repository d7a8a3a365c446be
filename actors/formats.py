"""What a dataset file is: format sniffing from its first bytes, Parquet footers, friendly types."""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from chatdf.errors import DatasetError

FORMATS = ("parquet", "csv", "tsv", "ndjson", "ipc")
NOT_SUPPORTED = "This file is not a supported data format (Parquet, CSV, TSV, NDJSON or Arrow IPC)"
PARQUET_CORRUPT = "The Parquet file is truncated or corrupt"
EMPTY_FILE = "The dataset file is empty"
SNIFF_BYTES = 64 * 1024  # enough for a header line, a gzip block or an IPC schema message

PARQUET_MAGIC = b"PAR1"
IPC_FILE_MAGIC = b"ARROW1"
IPC_CONTINUATION = b"\xff\xff\xff\xff"
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
SUFFIXES = {
    "parquet": ".parquet",
    "csv": ".csv",
    "tsv": ".tsv",
    "ndjson": ".ndjson",
    "ipc": ".arrow",
}

_FRIENDLY: dict[Any, str] = {
    pl.String: "Text",
    pl.Boolean: "Boolean",
    pl.Date: "Date",
    pl.Datetime: "Datetime",
    pl.Duration: "Duration",
    pl.Time: "Time",
    pl.List: "List",
    pl.Array: "List",
    pl.Struct: "Struct",
    pl.Binary: "Binary",
    pl.Categorical: "Categorical",
    pl.Enum: "Categorical",
    pl.Null: "Null",
    pl.Object: "Object",
}


@dataclass(frozen=True)
class Sniffed:
    """The format recognised from the first bytes, and how the bytes are wrapped."""

    format: str
    gzip: bool = False
    ipc_stream: bool = False


def friendly_type(dtype: pl.DataType | type[pl.DataType]) -> str:
    """A type name a person reads: Integer, Float, Text, Datetime, List..."""
    if dtype.is_integer():
        return "Integer"
    if dtype.is_float():
        return "Float"
    if dtype.is_decimal():
        return "Decimal"
    return _FRIENDLY.get(dtype.base_type(), str(dtype))


def describe_schema(schema: pl.Schema) -> list[dict[str, str]]:
    """The wire form of a schema: [{"name", "type"}] in column order."""
    return [{"name": name, "type": friendly_type(dtype)} for name, dtype in schema.items()]


def sniff_format(first: bytes, name: str = "") -> Sniffed:
    """Recognise the format from the bytes; `name` (last URL path segment) only breaks ties."""
    if not first:
        raise DatasetError(EMPTY_FILE)
    if first.startswith(PARQUET_MAGIC):
        return Sniffed("parquet")
    if first.startswith(IPC_FILE_MAGIC):
        return Sniffed("ipc")
    if first.startswith(IPC_CONTINUATION):
        return Sniffed("ipc", ipc_stream=True)
    if first.startswith(GZIP_MAGIC):
        inner = gunzip_prefix(first)
        return Sniffed(sniff_text(inner, name.removesuffix(".gz")), gzip=True)
    return Sniffed(sniff_text(first, name))


def gunzip_prefix(data: bytes) -> bytes:
    """Decompress what a prefix of a gzip stream holds (an incomplete stream is fine)."""
    try:
        inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, SNIFF_BYTES)
    except zlib.error as bad:
        raise DatasetError(NOT_SUPPORTED, f"gzip data could not be decompressed: {bad}") from None
    if not inner:
        raise DatasetError(EMPTY_FILE, "the gzip file holds no data")
    return inner


def sniff_text(data: bytes, name: str = "") -> str:
    """csv, tsv or ndjson for delimited or JSON-lines text; anything else is refused."""
    data = data.removeprefix(UTF8_BOM)
    if _looks_binary(data):
        raise DatasetError(NOT_SUPPORTED, "the file holds binary data")
    lines = [line.strip() for line in _complete_lines(data) if line.strip()]
    if not lines:
        raise DatasetError(EMPTY_FILE)
    head = lines[0]
    if head.startswith("{"):
        return "ndjson"
    if head.startswith("<"):
        raise DatasetError(NOT_SUPPORTED, "the file looks like an HTML or XML page")
    if head.startswith("["):
        raise DatasetError(
            NOT_SUPPORTED, "a JSON array; newline-delimited JSON (one object per line) works"
        )
    tabs, commas = head.count("\t"), head.count(",")
    if tabs and (tabs >= commas or name.endswith((".tsv", ".tab"))):
        return "tsv"
    if commas:
        return "csv"
    if name.endswith((".csv", ".txt")) and len(lines) > 1:
        return "csv"  # a single-column CSV: nothing to split on, and the name says so
    raise DatasetError(NOT_SUPPORTED, "no comma or tab separates the columns of the first line")


def _looks_binary(data: bytes) -> bool:
    sample = data[:SNIFF_BYTES]
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 0x20 and b not in (0x09, 0x0A, 0x0D, 0x0C))
    return control > len(sample) // 100


def _complete_lines(data: bytes) -> list[str]:
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    # The prefix is usually cut mid-line; a cut line would miscount separators.
    if len(lines) > 1 and not text.endswith(("\n", "\r")):
        lines.pop()
    return lines


def parquet_footer_length(tail: bytes, file_size: int) -> int:
    """Length of the Parquet footer, from the last 8 bytes (length + PAR1) of the file."""
    if file_size < 12 or len(tail) < 8 or not tail.endswith(PARQUET_MAGIC):
        raise DatasetError(PARQUET_CORRUPT, "the file does not end with the Parquet marker")
    length = int.from_bytes(tail[-8:-4], "little")
    if length + 12 > file_size:
        raise DatasetError(PARQUET_CORRUPT, f"footer of {length} bytes in {file_size} bytes")
    return length


def parquet_metadata(footer_and_trailer: bytes) -> tuple[int, pl.Schema]:
    """Row count and Polars schema from footer + length + PAR1, without the file's body."""
    # The readers only look at the end of a file; a stub holding magic + footer is a valid one.
    stub = PARQUET_MAGIC + footer_and_trailer
    try:
        rows = pq.read_metadata(pa.BufferReader(stub)).num_rows
        schema = pl.Schema(pl.read_parquet_schema(io.BytesIO(stub)))
    except Exception as bad:  # pyarrow and polars raise several types for a broken footer
        raise DatasetError(PARQUET_CORRUPT, f"{type(bad).__name__}: {bad}") from None
    return rows, schema
