"""Format sniffing, Parquet footer parsing and friendly type names, on bytes made by Polars."""

from __future__ import annotations

import datetime as dt
import gzip
import io
from decimal import Decimal

import polars as pl
import pytest

from actors.formats import (
    EMPTY_FILE,
    NOT_SUPPORTED,
    PARQUET_CORRUPT,
    describe_schema,
    friendly_type,
    parquet_footer_length,
    parquet_metadata,
    sniff_format,
)
from chatdf.errors import DatasetError

FRAME = pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"], "score": [0.5, 1.5, None]})


def _bytes(write: str, frame: pl.DataFrame = FRAME, **options: object) -> bytes:
    buffer = io.BytesIO()
    getattr(frame, write)(buffer, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_bytes("write_parquet"), ("parquet", False, False)),
        (_bytes("write_ipc"), ("ipc", False, False)),
        (_bytes("write_ipc_stream"), ("ipc", False, True)),
        (_bytes("write_csv"), ("csv", False, False)),
        (_bytes("write_csv", separator="\t"), ("tsv", False, False)),
        (_bytes("write_ndjson"), ("ndjson", False, False)),
        (gzip.compress(_bytes("write_csv")), ("csv", True, False)),
        (gzip.compress(_bytes("write_csv", separator="\t")), ("tsv", True, False)),
        (gzip.compress(_bytes("write_ndjson")), ("ndjson", True, False)),
        (b"\xef\xbb\xbfa,b\n1,2\n", ("csv", False, False)),
    ],
    ids=[
        "parquet",
        "ipc",
        "ipc-stream",
        "csv",
        "tsv",
        "ndjson",
        "csv.gz",
        "tsv.gz",
        "ndjson.gz",
        "bom",
    ],
)
def test_sniff_recognises_each_format_from_bytes(
    data: bytes, expected: tuple[str, bool, bool]
) -> None:
    # No name given: the bytes alone decide.
    sniffed = sniff_format(data[:65536])
    assert (sniffed.format, sniffed.gzip, sniffed.ipc_stream) == expected


def test_sniff_ignores_a_misleading_extension() -> None:
    assert sniff_format(_bytes("write_parquet"), "data.csv").format == "parquet"
    assert sniff_format(_bytes("write_csv"), "data.parquet").format == "csv"


def test_sniff_uses_the_name_only_to_break_a_tie() -> None:
    one_column = b"city\nParis\nOslo\n"
    assert sniff_format(one_column, "cities.csv").format == "csv"
    with pytest.raises(DatasetError) as refused:
        sniff_format(one_column, "cities")
    assert refused.value.error == NOT_SUPPORTED


def test_sniff_on_a_prefix_cut_mid_line() -> None:
    text = b"a\tb,c\tdd\n" + b"1\t2,3\t4\n" * 20_000
    assert sniff_format(text[:65536]).format == "tsv"


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(100),
        bytes(range(256)) * 10,
        b"<!DOCTYPE html><html><body>Not found</body></html>",
        b'[{"a": 1}, {"a": 2}]',
        b"just some words without any separator\n",
        b"\x1f\x8bnot really gzip at all",
    ],
    ids=["png", "random", "html", "json-array", "prose", "bad-gzip"],
)
def test_sniff_refuses_what_is_not_data(data: bytes) -> None:
    with pytest.raises(DatasetError) as refused:
        sniff_format(data, "file")
    assert refused.value.error == NOT_SUPPORTED


@pytest.mark.parametrize("data", [b"", b"\n\n  \n", gzip.compress(b"")])
def test_sniff_refuses_an_empty_file(data: bytes) -> None:
    with pytest.raises(DatasetError) as refused:
        sniff_format(data)
    assert refused.value.error == EMPTY_FILE


def test_parquet_metadata_from_the_footer_alone() -> None:
    data = _bytes("write_parquet")
    length = parquet_footer_length(data[-64:], len(data))
    rows, schema = parquet_metadata(data[-(length + 8) :])
    assert rows == 3
    assert schema == pl.Schema({"id": pl.Int64, "name": pl.String, "score": pl.Float64})


@pytest.mark.parametrize("cut", [1, 8, 100])
def test_truncated_parquet_is_refused(cut: int) -> None:
    data = _bytes("write_parquet")[:-cut]
    with pytest.raises(DatasetError) as refused:
        length = parquet_footer_length(data[-64:], len(data))
        parquet_metadata(data[-(length + 8) :])
    assert refused.value.error == PARQUET_CORRUPT


def test_corrupt_parquet_footer_is_refused() -> None:
    data = bytearray(_bytes("write_parquet"))
    length = parquet_footer_length(bytes(data[-64:]), len(data))
    data[-(length + 8) : -(length + 8) + 20] = b"\xff" * 20  # garble the footer's first bytes
    with pytest.raises(DatasetError) as refused:
        parquet_metadata(bytes(data[-(length + 8) :]))
    assert refused.value.error == PARQUET_CORRUPT


def test_footer_longer_than_the_file_is_refused() -> None:
    with pytest.raises(DatasetError) as refused:
        parquet_footer_length(b"\x00" * 4 + (10_000).to_bytes(4, "little") + b"PAR1", 100)
    assert refused.value.error == PARQUET_CORRUPT


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        (pl.Int8, "Integer"),
        (pl.UInt64, "Integer"),
        (pl.Int128, "Integer"),
        (pl.Float32, "Float"),
        (pl.Float64, "Float"),
        (pl.Decimal(10, 2), "Decimal"),
        (pl.String, "Text"),
        (pl.Boolean, "Boolean"),
        (pl.Date, "Date"),
        (pl.Datetime("us", "UTC"), "Datetime"),
        (pl.Duration("ms"), "Duration"),
        (pl.Time, "Time"),
        (pl.List(pl.Int64), "List"),
        (pl.Array(pl.Int8, 3), "List"),
        (pl.Struct({"x": pl.Int64}), "Struct"),
        (pl.Binary, "Binary"),
        (pl.Categorical, "Categorical"),
        (pl.Enum(["a", "b"]), "Categorical"),
        (pl.Null, "Null"),
    ],
)
def test_friendly_type_names(dtype: pl.DataType, name: str) -> None:
    assert friendly_type(dtype) == name


def test_describe_schema_keeps_column_order() -> None:
    frame = pl.DataFrame(
        {
            "when": [dt.datetime(2025, 1, 1)],
            "price": pl.Series([Decimal("1.10")], dtype=pl.Decimal(10, 2)),
            "tags": [["a"]],
        }
    )
    assert describe_schema(frame.schema) == [
        {"name": "when", "type": "Datetime"},
        {"name": "price", "type": "Decimal"},
        {"name": "tags", "type": "List"},
    ]
