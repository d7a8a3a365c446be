"""The guarded HTTP client for dataset URLs: SSRF policy, pinned sockets, timeouts, size caps."""

from __future__ import annotations

import contextlib
import errno
import functools
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, BinaryIO

import httpx
from ssrfguard import (
    DEFAULT_DENIED,
    AddressTable,
    BlockedAddressError,
    BlockedURLError,
    Policy,
    ProxyUnsupportedError,
    TooManyRedirectsError,
)
from ssrfguard.httpx import Client

from actors.tls import certificate_failure, tls_context
from chatdf.errors import DatasetError
from chatdf.settings import Settings

Resolver = Callable[..., Iterable[tuple[Any, ...]]]
Clock = Callable[[], float]

INVALID_URL = "Invalid URL format"
PRIVATE_ADDRESS = "The dataset URL points to a private or internal network address"
# Dataset servers live on any port (MinIO on 9000, dev servers on 8080); the address table, not
# the port, is what keeps requests away from internal services.
ANY_PORT = frozenset(range(1, 65536))
CHUNK_BYTES = 64 * 1024
MAX_URL_CHARS = 4096

# A policy that checks only the shape of a URL: no address is denied here, that is the guard's job.
_SHAPE_POLICY = Policy(allowed_ports=ANY_PORT, denied_networks=AddressTable(()))


class DatasetUnreachable(DatasetError):
    """The dataset URL did not answer as it should (no connection, timeout, HTTP error).

    Distinct from a plain DatasetError (bad input: bad URL, private address, unreadable file) so
    the edge can answer 502 on refresh of a URL that stopped answering.
    """

    upstream = True


def validate_url(url: str) -> None:
    """Refuse a URL whose shape is wrong (scheme, host, port, credentials); no network I/O."""
    if not isinstance(url, str) or not url:
        raise DatasetError(INVALID_URL, "the URL is empty")
    if len(url) > MAX_URL_CHARS:
        raise DatasetError(INVALID_URL, f"the URL is longer than {MAX_URL_CHARS} characters")
    if "\\" in url:
        # Browsers read a backslash as a slash and Python does not; refuse the ambiguity.
        raise DatasetError(INVALID_URL, "the URL contains a backslash")
    try:
        _SHAPE_POLICY.check_url(url)
    except BlockedURLError as refused:
        raise DatasetError(INVALID_URL, _only_http_hint(refused.reason)) from None
    try:
        _ = httpx.URL(url).host  # as the fetch client parses it: a bad IDNA label fails here
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise DatasetError(INVALID_URL, f"the host name is not valid ({exc})"[:300]) from None


def _only_http_hint(reason: str) -> str:
    if "allowed_schemes" in reason:
        return "only http:// and https:// URLs are supported"
    return reason


def build_policy(settings: Settings, allowed_networks: Iterable[str] = ()) -> Policy:
    """The address policy for dataset URLs.

    `DATASET_ALLOWED_NETWORKS` and `allowed_networks` (tests) are exceptions to the denied
    ranges; the address still has to pass every other check.
    """
    return _policy(
        settings.dataset_allow_private_hosts,
        settings.allowed_dataset_networks + tuple(allowed_networks),
        settings.dataset_max_redirects,
    )


@functools.lru_cache(maxsize=32)
def _policy(allow_private: bool, allowed_networks: tuple[str, ...], max_redirects: int) -> Policy:
    # Cached: validating 65535 allowed ports costs ~20 ms, and policies are immutable.
    return Policy(
        allowed_ports=ANY_PORT,
        denied_networks=AddressTable(()) if allow_private else DEFAULT_DENIED,
        allowed_networks=allowed_networks,  # type: ignore[arg-type]
        max_redirects=max_redirects,
    )


_dns_pool: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _dns_pool
    if _dns_pool is None:
        _dns_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chatdf-dns")
    return _dns_pool


@dataclass(frozen=True)
class DeadlineResolver:
    """getaddrinfo with a deadline: the platform lookup has none, so it runs in a worker thread."""

    timeout_s: float
    lookup: Resolver = socket.getaddrinfo

    def __call__(self, host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        future = _pool().submit(self.lookup, host, port, *args)
        try:
            return list(future.result(timeout=self.timeout_s))
        except FutureTimeout:
            raise TimeoutError(f"looking up {host} took longer than {self.timeout_s:g} s") from None


@dataclass(frozen=True)
class Head:
    """The first bytes of a resource and what the server said about its size and ranges."""

    url: str  # after redirects: later range requests go straight there (and are re-checked)
    first_bytes: bytes
    total_size: int | None
    ranges: bool


def seconds(value: float) -> str:
    """'10 seconds', '0.2 seconds', '1 second' for error sentences."""
    return f"{value:g} second" + ("" if value == 1 else "s")


class GuardedClient:
    """Every byte of a dataset URL comes through here: guarded, pinned, time- and size-capped.

    One client serves one operation; `dataset_total_timeout_s` runs from its construction.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        allowed_networks: Iterable[str] = (),
        resolver: Resolver | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._ends_at = clock() + settings.dataset_total_timeout_s
        self._client = Client(
            policy=build_policy(settings, allowed_networks),
            resolver=DeadlineResolver(
                settings.dataset_connect_timeout_s, resolver or socket.getaddrinfo
            ),
            verify=tls_context(settings.dataset_ca_bundle),
            follow_redirects=True,
            trust_env=False,  # an environment proxy would resolve names itself, unpinned
            headers={"accept-encoding": "identity", "user-agent": "chatdf-dataset-loader"},
        )

    def __enter__(self) -> GuardedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def head(self, url: str, size: int) -> Head:
        """Read the first `size` bytes (by Range when the server allows, else a cut-off GET)."""
        with self._open(url, {"range": f"bytes=0-{size - 1}"}) as response:
            if response.status_code == 416:
                return Head(str(response.url), b"", 0, True)
            self._raise_for_status(response)
            ranged = response.status_code == 206
            total = _range_total(response) if ranged else _content_length(response)
            body = self._read_upto(response, size)
            return Head(str(response.url), body, total, ranged)

    def read_range(self, url: str, start: int, end: int) -> bytes:
        """Bytes start..end inclusive; a server that stops honouring Range is an error."""
        with self._open(url, {"range": f"bytes={start}-{end}"}) as response:
            self._raise_for_status(response)
            if response.status_code != 206:
                raise DatasetUnreachable(
                    "The dataset server stopped answering range requests",
                    f"expected 206 for bytes {start}-{end}, got {response.status_code}",
                )
            want = end - start + 1
            body = self._read_upto(response, want)
            if len(body) != want:
                raise DatasetUnreachable(
                    "The dataset server sent fewer bytes than asked for",
                    f"asked {want} bytes, got {len(body)}",
                )
            return body

    def download(self, url: str, sink: BinaryIO) -> int:
        """Stream the whole body into `sink`, refusing more than `dataset_max_bytes`."""
        limit = self.settings.dataset_max_bytes
        with self._open(url, {}) as response:
            self._raise_for_status(response)
            declared = _content_length(response)
            if declared is not None and declared > limit:
                raise too_large(limit, declared)
            written = 0
            for chunk in self._chunks(response):
                written += len(chunk)
                if written > limit:
                    raise too_large(limit)
                sink.write(chunk)
            return written

    def left_s(self) -> float:
        """Seconds left of the total time budget; raises when it is spent."""
        left = self._ends_at - self._clock()
        if left <= 0:
            total = self.settings.dataset_total_timeout_s
            raise DatasetUnreachable(f"Loading the dataset took longer than {seconds(total)}")
        return left

    def _timeout(self) -> httpx.Timeout:
        left = self.left_s()
        connect = min(self.settings.dataset_connect_timeout_s, left)
        read = min(self.settings.dataset_read_timeout_s, left)
        return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)

    @contextlib.contextmanager
    def _open(self, url: str, headers: dict[str, str]) -> Iterator[httpx.Response]:
        with (
            translated_errors(self.settings),
            self._client.stream("GET", url, headers=headers, timeout=self._timeout()) as response,
        ):
            yield response

    def _chunks(self, response: httpx.Response) -> Iterator[bytes]:
        # The read timeout bounds each wait; the total budget is checked between chunks.
        for chunk in response.iter_raw(CHUNK_BYTES):
            self.left_s()
            yield chunk

    def _read_upto(self, response: httpx.Response, size: int) -> bytes:
        parts: list[bytes] = []
        got = 0
        for chunk in self._chunks(response):
            parts.append(chunk)
            got += len(chunk)
            if got >= size:
                break
        return b"".join(parts)[:size]

    @staticmethod
    def _raise_for_status(response: httpx.Response) -> None:
        if response.status_code >= 400:
            phrase = response.reason_phrase or httpx.codes.get_reason_phrase(response.status_code)
            raise DatasetUnreachable(
                f"The dataset URL answered {response.status_code} {phrase}".rstrip()
            )
        if response.status_code >= 300:
            raise DatasetUnreachable(
                f"The dataset URL answered {response.status_code} without a usable redirect"
            )


def too_large(limit: int, declared: int | None = None) -> DatasetError:
    """The error for a body over `dataset_max_bytes`."""
    details = f"the server declared {declared} bytes" if declared is not None else None
    return DatasetError(f"The dataset is larger than the {human_bytes(limit)} limit", details)


def human_bytes(n: int) -> str:
    """1073741824 -> '1 GiB' (sentences shown to people)."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:g} {unit}" if unit != "bytes" else f"{n} bytes"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _range_total(response: httpx.Response) -> int | None:
    # Content-Range: bytes 0-65535/123456 (the total may be '*': unknown)
    total = response.headers.get("content-range", "").rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


@contextlib.contextmanager
def translated_errors(settings: Settings) -> Iterator[None]:
    """Turn guard and transport failures into sentences a person understands."""
    try:
        yield
    except (BlockedAddressError, BlockedURLError) as refused:
        address_refusal = (
            isinstance(refused, BlockedAddressError)
            or isinstance(refused.__cause__, BlockedAddressError)
            or "digits and dots" in refused.reason  # an encoded address such as 2130706433
        )
        message = PRIVATE_ADDRESS if address_refusal else "The dataset URL is not allowed"
        raise DatasetError(message, refused.reason) from None
    except TooManyRedirectsError as loop:
        raise DatasetUnreachable(
            f"The dataset URL redirected more than {loop.limit} times", " -> ".join(loop.chain)
        ) from None
    except ProxyUnsupportedError as proxy:  # pragma: no cover - trust_env is off
        raise DatasetError(
            "A proxy is configured; dataset URLs cannot be fetched", str(proxy)
        ) from None
    except httpx.ConnectTimeout as slow:
        raise DatasetUnreachable(
            f"The dataset URL did not answer within {seconds(settings.dataset_connect_timeout_s)}",
            str(slow) or "connect timeout",
        ) from None
    except httpx.TimeoutException as slow:
        raise DatasetUnreachable(
            f"The dataset URL did not answer within {seconds(settings.dataset_read_timeout_s)}",
            str(slow) or "read timeout",
        ) from None
    except httpx.ConnectError as failed:
        certificate = certificate_failure(failed)
        if certificate is not None:
            raise DatasetUnreachable(*certificate) from None
        raise DatasetUnreachable(
            f"Could not reach the dataset URL: {_connect_reason(failed)}", str(failed)
        ) from None
    except (httpx.RemoteProtocolError, httpx.ReadError) as broken:
        raise DatasetUnreachable(
            "The dataset server closed the connection before sending the whole file", str(broken)
        ) from None
    except httpx.HTTPError as other:
        raise DatasetUnreachable("Could not download the dataset", repr(other)) from None


def _connect_reason(failed: Exception) -> str:
    text = str(failed).lower()
    cause = failed.__cause__ or failed.__context__
    code = getattr(cause, "errno", None)
    if code == errno.ECONNREFUSED or "refused" in text:
        return "connection refused"
    if (
        isinstance(cause, socket.gaierror)
        or "name or service not known" in text
        or "resolve" in text
    ):
        return "the host name could not be found"
    if "ssl" in text or "certificate" in text:
        return "the secure connection failed (certificate or TLS problem)"
    if code == errno.ENETUNREACH or "unreachable" in text:
        return "the network is unreachable"
    return "the connection failed"
