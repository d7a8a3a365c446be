"""The SSRF guard with private hosts refused: the address matrix, odd spellings, redirect hops."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from actors.dataset_task import ensure_local, inspect_dataset
from actors.fetch import PRIVATE_ADDRESS, GuardedClient, build_policy
from chatdf.errors import DatasetError
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer

CSV = b"a,b\n1,2\n"


@pytest.fixture
def guarded(settings: Settings) -> Settings:
    """Production behaviour: private and internal addresses refused."""
    return settings.model_copy(update={"dataset_allow_private_hosts": False})


PRIVATE_URLS = [
    "http://127.0.0.1/data.csv",
    "http://127.0.0.2:8080/data.csv",
    "http://localhost/data.csv",
    "http://LocalHost/data.csv",
    "http://[::1]/data.csv",
    "http://10.0.0.1/data.csv",
    "http://10.255.255.254/data.csv",
    "http://172.16.0.1/data.csv",
    "http://172.31.255.1/data.csv",
    "http://192.168.1.1/data.csv",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/data.csv",
    "http://0.0.0.0/data.csv",
    "http://224.0.0.1/data.csv",
    "http://240.0.0.1/data.csv",
    "http://255.255.255.255/data.csv",
    "http://[::]/data.csv",
    "http://[fe80::1]/data.csv",
    "http://[fc00::1]/data.csv",
    "http://[fd00:ec2::254]/data.csv",
    "http://[ff02::1]/data.csv",
    "http://[::ffff:127.0.0.1]/data.csv",
    "http://[::ffff:7f00:1]/data.csv",
    "http://[::ffff:169.254.169.254]/data.csv",
    "http://[::7f00:1]/data.csv",  # IPv4-compatible (deprecated)
    "http://[64:ff9b::7f00:1]/data.csv",  # NAT64 carrying 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/data.csv",  # NAT64 carrying the metadata endpoint
    "http://[2002:7f00:1::]/data.csv",  # 6to4 carrying 127.0.0.1
    "http://[2002:a9fe:a9fe::1]/data.csv",  # 6to4 carrying 169.254.169.254
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/data.csv",  # Teredo, client 127.0.0.1
    # Hex spellings look like names; the resolver decodes them to 127.0.0.1, which is refused.
    "http://0x7f000001/data.csv",
    "http://0x7f.0.0.1/data.csv",
    "https://127.0.0.1:443/data.csv",
]
# Digits-and-dots spellings of 127.0.0.1 and 0.0.0.0: no real host name has this shape, so the
# URL itself is refused before any lookup (the route answers 400 "Invalid URL format").
ENCODED_URLS = [
    "http://127.1/data.csv",
    "http://127.0.1/data.csv",
    "http://2130706433/data.csv",
    "http://0177.0.0.1/data.csv",
    "http://017700000001/data.csv",
    "http://0/data.csv",
]


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_private_and_internal_addresses_are_refused(url: str, guarded: Settings) -> None:
    with pytest.raises(DatasetError) as refused:
        inspect_dataset(url, guarded)
    assert refused.value.error == PRIVATE_ADDRESS
    assert refused.value.details  # names the rule, e.g. "127.0.0.0/8 is Loopback (RFC1122)"


@pytest.mark.parametrize(
    "url",
    [
        *ENCODED_URLS,
        "http://trusted.example@127.0.0.1/data.csv",
        "http://a@b/data.csv",
        "http://trusted.example\\@127.0.0.1/data.csv",
        "http://127.0.0.1\\.trusted.example/data.csv",
        "file:///etc/passwd",
        "gopher://127.0.0.1:25/",
    ],
)
def test_disguises_are_refused_before_any_lookup(url: str, guarded: Settings) -> None:
    with pytest.raises(DatasetError) as refused:
        inspect_dataset(url, guarded)
    assert refused.value.error == "Invalid URL format"


def test_the_loopback_fake_is_refused_without_the_private_switch(
    data_server: FakeDataServer, guarded: Settings
) -> None:
    url = data_server.add("/data.csv", CSV)
    with pytest.raises(DatasetError) as refused:
        inspect_dataset(url, guarded)
    assert refused.value.error == PRIVATE_ADDRESS
    assert data_server.requests["/data.csv"] == 0


def test_the_private_switch_lets_tests_reach_loopback(
    data_server: FakeDataServer, settings: Settings
) -> None:
    assert settings.dataset_allow_private_hosts
    assert inspect_dataset(data_server.add("/data.csv", CSV), settings)["row_count"] == 1


def test_ensure_local_is_guarded_too(data_server: FakeDataServer, guarded: Settings) -> None:
    url = data_server.add("/data.csv", CSV)
    with pytest.raises(DatasetError) as refused:
        ensure_local(url, "csv", guarded)
    assert refused.value.error == PRIVATE_ADDRESS


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/data.csv",
        "http://10.0.0.1/data.csv",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/data.csv",
        "http://2130706433/data.csv",
    ],
)
def test_every_redirect_hop_is_checked(
    data_server: FakeDataServer, guarded: Settings, target: str
) -> None:
    """127.0.0.1 plays a public host (exact allow-list entry); where it redirects is refused."""
    data_server.add("/data.csv", CSV)
    start = data_server.add("/moved", redirect_to=target.format(port=data_server.port))
    with (
        GuardedClient(guarded, allowed_networks=["127.0.0.1/32"]) as client,
        pytest.raises(DatasetError) as refused,
    ):
        inspect_dataset(start, guarded, client=client)
    assert refused.value.error == PRIVATE_ADDRESS
    assert data_server.requests["/moved"] == 1
    assert data_server.requests["/data.csv"] == 0


def test_a_redirect_to_another_scheme_is_refused(
    data_server: FakeDataServer, guarded: Settings
) -> None:
    start = data_server.add("/moved", redirect_to="file:///etc/passwd")
    with (
        GuardedClient(guarded, allowed_networks=["127.0.0.1/32"]) as client,
        pytest.raises(DatasetError),
    ):
        inspect_dataset(start, guarded, client=client)


def test_a_name_resolving_inside_is_refused(guarded: Settings) -> None:
    """A public-looking name whose DNS answer is internal (the rebinding end state)."""

    def inside(host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    with (
        GuardedClient(guarded, resolver=inside) as client,
        pytest.raises(DatasetError) as refused,
    ):
        inspect_dataset("http://data.example.com/data.csv", guarded, client=client)
    assert refused.value.error == PRIVATE_ADDRESS


def test_a_name_resolving_both_ways_is_refused(guarded: Settings) -> None:
    def split(host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
        ]

    with (
        GuardedClient(guarded, resolver=split) as client,
        pytest.raises(DatasetError) as refused,
    ):
        inspect_dataset("http://data.example.com/data.csv", guarded, client=client)
    assert refused.value.error == PRIVATE_ADDRESS


@pytest.mark.parametrize(
    "address",
    ["2002:7f00:1::", "64:ff9b::7f00:1", "::7f00:1", "fec0::1", "ff02::1"],
)
def test_the_guard_decodes_what_the_standard_library_calls_global(
    address: str, guarded: Settings
) -> None:
    """Why we rely on the guard's own table: Python 3.11's ipaddress misses these wrappers."""
    assert ipaddress.ip_address(address).is_global
    assert not build_policy(guarded).permits_address(address)


def test_an_allow_list_entry_is_exact(guarded: Settings) -> None:
    policy = build_policy(guarded, ["127.0.0.1/32"])
    assert policy.permits_address("127.0.0.1")
    assert not policy.permits_address("127.0.0.2")
    assert not policy.permits_address("::ffff:127.0.0.2")
    assert policy.permits_address("8.8.8.8")


def test_operator_allowed_networks_open_only_those_ranges(
    data_server: FakeDataServer, guarded: Settings
) -> None:
    """DATASET_ALLOWED_NETWORKS: an on-prem data server is reachable, the rest stays refused."""
    opened = Settings(
        **{**guarded.model_dump(), "dataset_allowed_networks": "10.20.0.0/16, 127.0.0.1/32"}
    )
    assert opened.allowed_dataset_networks == ("10.20.0.0/16", "127.0.0.1/32")
    assert inspect_dataset(data_server.add("/data.csv", CSV), opened)["row_count"] == 1
    policy = build_policy(opened)
    assert policy.permits_address("10.20.3.4")
    for outside in ("10.21.0.1", "127.0.0.2", "169.254.169.254", "192.168.1.1"):
        assert not policy.permits_address(outside)
    elsewhere = data_server.url("/data.csv", host="127.0.0.2")
    with pytest.raises(DatasetError) as refused:
        inspect_dataset(elsewhere, opened)
    assert refused.value.error == PRIVATE_ADDRESS


@pytest.mark.parametrize("value", ["10.0.0.0/33", "10.0.0.1/8", "intranet", "10.0.0.0/8,,x"])
def test_allowed_networks_must_be_cidrs(value: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="CIDR"):
        Settings(dataset_allowed_networks=value)
