"""The guarded client against a real loopback server: ranges, redirects, timeouts, size caps."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors.fetch import DatasetUnreachable, GuardedClient, validate_url
from chatdf.errors import DatasetError
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer

BODY = bytes(range(256)) * 1024  # 256 KiB


class FakeClock:
    """A monotonic clock that only moves when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeResolver:
    """Answers every name with fixed addresses and counts the lookups."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        self.lookups.append(host)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
            for address in self.addresses
        ]


@pytest.fixture
def client(settings: Settings) -> Iterator[GuardedClient]:
    with GuardedClient(settings) as guarded:
        yield guarded


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "url", ["http://example.com/data.csv", "https://example.com:8443/a/b.parquet?x=1#frag"]
)
def test_validate_url_accepts_http_and_https(url: str) -> None:
    validate_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com/data.csv",
        "ftp://example.com/data.csv",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://",
        "http:///data.csv",
        "http://exa mple.com/",
        " http://example.com/",
        "http://example.com:99999/",
        "http://user:secret@example.com/data.csv",
        "http://example.com\\@10.0.0.1/",
        "http://example.com/a\\b.csv",
        "http://[::1/",
    ],
)
def test_validate_url_refuses_bad_shapes(url: str) -> None:
    with pytest.raises(DatasetError) as refused:
        validate_url(url)
    assert refused.value.error == "Invalid URL format"
    assert refused.value.details


def test_validate_url_says_only_http_is_supported() -> None:
    with pytest.raises(DatasetError) as refused:
        validate_url("s3://bucket/key.parquet")
    assert refused.value.details == "only http:// and https:// URLs are supported"


def test_head_reads_only_the_first_bytes_by_range(
    data_server: FakeDataServer, client: GuardedClient
) -> None:
    url = data_server.add("/f", BODY)
    head = client.head(url, 1000)
    assert head.first_bytes == BODY[:1000]
    assert (head.total_size, head.ranges) == (len(BODY), True)
    assert data_server.bytes_served["/f"] == 1000


def test_head_without_range_support_reads_a_prefix(
    data_server: FakeDataServer, client: GuardedClient
) -> None:
    url = data_server.add("/f", BODY, ranges=False)
    head = client.head(url, 1000)
    assert head.first_bytes == BODY[:1000]
    assert (head.total_size, head.ranges) == (len(BODY), False)


def test_read_range_returns_exact_bytes(data_server: FakeDataServer, client: GuardedClient) -> None:
    url = data_server.add("/f", BODY)
    assert client.read_range(url, 1000, 1999) == BODY[1000:2000]
    assert client.read_range(url, len(BODY) - 8, len(BODY) - 1) == BODY[-8:]


def test_read_range_refuses_a_server_that_ignores_ranges(
    data_server: FakeDataServer, client: GuardedClient
) -> None:
    url = data_server.add("/f", BODY, ranges=False)
    with pytest.raises(DatasetUnreachable):
        client.read_range(url, 0, 9)


def test_download_streams_the_whole_body(
    data_server: FakeDataServer, client: GuardedClient
) -> None:
    url = data_server.add("/f", BODY)
    sink = io.BytesIO()
    assert client.download(url, sink) == len(BODY)
    assert sink.getvalue() == BODY


def test_download_refuses_more_than_max_bytes(
    data_server: FakeDataServer, settings: Settings
) -> None:
    url = data_server.add("/f", BODY)
    small = settings.model_copy(update={"dataset_max_bytes": 1000})
    with GuardedClient(small) as guarded, pytest.raises(DatasetError) as refused:
        guarded.download(url, io.BytesIO())
    assert refused.value.error == "The dataset is larger than the 1000 bytes limit"


@pytest.mark.parametrize(
    ("status", "sentence"),
    [
        (404, "The dataset URL answered 404 Not Found"),
        (403, "The dataset URL answered 403 Forbidden"),
        (500, "The dataset URL answered 500 Internal Server Error"),
    ],
)
def test_http_errors_become_sentences(
    data_server: FakeDataServer, client: GuardedClient, status: int, sentence: str
) -> None:
    url = data_server.add("/f", status=status)
    with pytest.raises(DatasetUnreachable) as failed:
        client.head(url, 100)
    assert failed.value.error == sentence


def test_connection_refused(client: GuardedClient) -> None:
    with pytest.raises(DatasetUnreachable) as failed:
        client.head(f"http://127.0.0.1:{_closed_port()}/data.csv", 100)
    assert failed.value.error == "Could not reach the dataset URL: connection refused"


def test_unknown_host_name(settings: Settings) -> None:
    def no_such_name(host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with (
        GuardedClient(settings, resolver=no_such_name) as guarded,
        pytest.raises(DatasetUnreachable) as failed,
    ):
        guarded.head("http://data.invalid/x.csv", 100)
    assert failed.value.error == (
        "Could not reach the dataset URL: the host name could not be found"
    )


def test_server_that_never_answers_times_out(
    data_server: FakeDataServer, settings: Settings
) -> None:
    url = data_server.add("/slow", BODY, stall=True)
    quick = settings.model_copy(update={"dataset_read_timeout_s": 0.2})
    with GuardedClient(quick) as guarded, pytest.raises(DatasetUnreachable) as failed:
        guarded.head(url, 100)
    assert failed.value.error == "The dataset URL did not answer within 0.2 seconds"


def test_server_that_stops_mid_body_times_out(
    data_server: FakeDataServer, settings: Settings
) -> None:
    url = data_server.add("/slow", BODY, stall_after=70_000)
    quick = settings.model_copy(update={"dataset_read_timeout_s": 0.2})
    with GuardedClient(quick) as guarded, pytest.raises(DatasetUnreachable) as failed:
        guarded.download(url, io.BytesIO())
    assert failed.value.error == "The dataset URL did not answer within 0.2 seconds"


def test_slow_name_lookup_times_out(settings: Settings) -> None:
    never = threading.Event()

    def stuck_lookup(host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        never.wait(5)
        return []

    quick = settings.model_copy(update={"dataset_connect_timeout_s": 0.2})
    try:
        with (
            GuardedClient(quick, resolver=stuck_lookup) as guarded,
            pytest.raises(DatasetUnreachable) as failed,
        ):
            guarded.head("http://slow-dns.example/x.csv", 100)
    finally:
        never.set()
    assert failed.value.error == "The dataset URL did not answer within 0.2 seconds"


def test_total_time_budget(data_server: FakeDataServer, settings: Settings) -> None:
    url = data_server.add("/f", BODY)
    clock = FakeClock()
    with GuardedClient(settings, clock=clock) as guarded:
        guarded.head(url, 100)
        clock.now += settings.dataset_total_timeout_s
        with pytest.raises(DatasetUnreachable) as failed:
            guarded.read_range(url, 0, 9)
    assert failed.value.error == "Loading the dataset took longer than 300 seconds"


def test_connection_cut_mid_body(data_server: FakeDataServer, client: GuardedClient) -> None:
    url = data_server.add("/cut", BODY, cut_after=1000)
    with pytest.raises(DatasetUnreachable) as failed:
        client.download(url, io.BytesIO())
    assert failed.value.error == (
        "The dataset server closed the connection before sending the whole file"
    )


def test_redirects_are_followed_and_later_reads_skip_them(
    data_server: FakeDataServer, client: GuardedClient
) -> None:
    target = data_server.add("/real", BODY)
    hop = data_server.add("/hop", redirect_to=target)
    start = data_server.add("/start", redirect_to=hop)
    head = client.head(start, 10)
    assert head.url == target
    assert head.first_bytes == BODY[:10]


def _redirect_chain(server: FakeDataServer, hops: int) -> str:
    url = server.add(f"/end{hops}", BODY)
    for hop in range(hops):
        url = server.add(f"/chain{hops}-{hop}", redirect_to=url)
    return url


def test_five_redirects_are_allowed(data_server: FakeDataServer, client: GuardedClient) -> None:
    head = client.head(_redirect_chain(data_server, 5), 10)
    assert head.url == data_server.url("/end5")


def test_too_many_redirects(data_server: FakeDataServer, client: GuardedClient) -> None:
    with pytest.raises(DatasetUnreachable) as failed:
        client.head(_redirect_chain(data_server, 6), 10)
    assert failed.value.error == "The dataset URL redirected more than 5 times"
    assert data_server.requests["/end6"] == 0


def test_connects_to_the_checked_address_with_the_original_host(
    data_server: FakeDataServer, settings: Settings
) -> None:
    """One lookup per connection; the socket goes to that answer; Host and SNI stay the name."""
    guarded_settings = settings.model_copy(update={"dataset_allow_private_hosts": False})
    resolver = FakeResolver("127.0.0.1")
    data_server.add("/f", BODY)
    url = data_server.url("/f", host="data.example")
    with GuardedClient(
        guarded_settings, allowed_networks=["127.0.0.1/32"], resolver=resolver
    ) as guarded:
        assert guarded.head(url, 10).first_bytes == BODY[:10]
        # Rebinding: the name now points inside, but the open connection is the checked one.
        resolver.addresses = ["10.0.0.1"]
        assert guarded.read_range(url, 10, 19) == BODY[10:20]
    assert resolver.lookups == ["data.example"]
    assert {seen["host"] for seen in data_server.headers_seen["/f"]} == {
        f"data.example:{data_server.port}"
    }


@pytest.mark.parametrize(
    "url", ["http://\uff11\uff12\uff13.example.com/x.csv", "http://xn--zz.example/x"]
)
def test_an_invalid_idna_host_is_an_invalid_url(url: str) -> None:
    """It passed the shape check and then crashed the load task inside the HTTP client."""
    from actors.fetch import validate_url

    with pytest.raises(DatasetError) as info:
        validate_url(url)
    assert info.value.error == "Invalid URL format"
