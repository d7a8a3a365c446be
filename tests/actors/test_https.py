"""The guarded client over real TLS: a throwaway CA, certificates by name, the pin kept intact."""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from actors.dataset_task import PARQUET_TAIL_BYTES, inspect_dataset
from actors.fetch import PRIVATE_ADDRESS, DatasetUnreachable, GuardedClient
from actors.formats import SNIFF_BYTES
from actors.tls import CA_BUNDLE_UNREADABLE, CERT_NOT_TRUSTED, tls_context
from chatdf.errors import DatasetError
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer

CSV = b"region,units\nNorth,3\nSouth,4\n"
HOUR = dt.timedelta(hours=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class FakeCA:
    """A throwaway certificate authority that issues server certificates into a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        public = self.key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name("chatdf test CA"))
            .issuer_name(_name("chatdf test CA"))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - HOUR)
            .not_valid_after(now + 24 * HOUR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = self.directory / "ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def server_context(self, dns_name: str, valid_from_h: int = -1) -> ssl.SSLContext:
        """A server-side TLS context holding a certificate for `dns_name` only (no IP SAN).

        The certificate is valid for a day starting `valid_from_h` hours from now.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC) + valid_from_h * HOUR
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(dns_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + 24 * HOUR)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        chain = self.directory / f"{dns_name}.pem"
        chain.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain)
        return context


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class FakeHttpsServer:
    """A started TLS FakeDataServer and the SNI names its clients sent."""

    server: FakeDataServer
    sni: list[str | None]

    def url(self, path: str, host: str = "localhost") -> str:
        return self.server.url(path, host=host)


class FakeResolver:
    """Answers every name with 127.0.0.1 (where the fakes listen), an address with itself."""

    def __init__(self) -> None:
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int, *args: Any) -> list[tuple[Any, ...]]:
        self.lookups.append(host)
        try:
            address = str(ipaddress.IPv4Address(host))
        except ValueError:
            address = "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> FakeCA:
    return FakeCA(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https_server(ca: FakeCA) -> Iterator[Callable[..., FakeHttpsServer]]:
    """Starts HTTPS fakes on 127.0.0.1 with a certificate for the given name; stops them after."""
    started: list[FakeDataServer] = []

    def start(dns_name: str, valid_from_h: int = -1) -> FakeHttpsServer:
        context = ca.server_context(dns_name, valid_from_h)
        sni: list[str | None] = []

        def record(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
            sni.append(name)

        context.sni_callback = record
        server = FakeDataServer(tls=context).start()
        started.append(server)
        return FakeHttpsServer(server, sni)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def trusting(settings: Settings, ca: FakeCA) -> Settings:
    """Loopback allowed, dataset servers verified against the throwaway CA only."""
    return settings.model_copy(update={"dataset_ca_bundle": str(ca.bundle)})


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~2.4 MB of incompressible Parquet: big enough that only its ends should be read."""
    path = tmp_path_factory.mktemp("data") / "x.parquet"
    rows = 300_000
    frame = pl.select(id=pl.int_range(0, rows), noise=pl.int_range(0, rows).hash(seed=3))
    frame.write_parquet(path, compression="uncompressed", statistics=False)
    return path


def test_parquet_over_https_reads_only_its_ends(
    https_server: Callable[..., FakeHttpsServer], trusting: Settings, parquet_file: Path
) -> None:
    """The certificate names only `localhost`: success means TLS checked the name, not the IP."""
    https = https_server("localhost")
    https.server.add("/x.parquet", parquet_file)
    described = inspect_dataset(https.url("/x.parquet"), trusting)
    assert (described["format"], described["row_count"]) == ("parquet", 300_000)
    assert [column["name"] for column in described["schema"]] == ["id", "noise"]
    assert https.server.requests["/x.parquet"] == 2  # the head, then the footer
    assert https.server.bytes_served["/x.parquet"] == SNIFF_BYTES + PARQUET_TAIL_BYTES
    assert https.sni and set(https.sni) == {"localhost"}


def test_pinned_name_keeps_sni_host_and_certificate_check(
    https_server: Callable[..., FakeHttpsServer], trusting: Settings
) -> None:
    """Production shape: private hosts off, the name resolved once, the socket pinned to it."""
    https = https_server("data.example")
    https.server.add("/x.csv", CSV)
    resolver = FakeResolver()
    guarded = trusting.model_copy(update={"dataset_allow_private_hosts": False})
    with GuardedClient(guarded, allowed_networks=["127.0.0.1/32"], resolver=resolver) as client:
        described = inspect_dataset(https.url("/x.csv", "data.example"), guarded, client=client)
    assert (described["format"], described["row_count"]) == ("csv", 2)
    assert set(resolver.lookups) == {"data.example"}
    assert set(https.sni) == {"data.example"}
    port = https.server.port
    assert {seen["host"] for seen in https.server.headers_seen["/x.csv"]} == {
        f"data.example:{port}"
    }


def test_a_certificate_for_another_name_is_refused(
    https_server: Callable[..., FakeHttpsServer], trusting: Settings
) -> None:
    https = https_server("other.example")
    https.server.add("/x.csv", CSV)
    with pytest.raises(DatasetUnreachable) as refused:
        inspect_dataset(https.url("/x.csv"), trusting)
    assert refused.value.error == "The dataset server's certificate is not valid for its host name"
    assert "localhost" in (refused.value.details or "")
    assert https.server.requests["/x.csv"] == 0  # refused in the handshake, before any request


@pytest.mark.parametrize(
    ("valid_from_h", "sentence"),
    [
        (-48, "The dataset server's certificate has expired"),
        (48, "The dataset server's certificate is not valid yet"),
    ],
)
def test_a_certificate_out_of_its_dates_is_refused(
    https_server: Callable[..., FakeHttpsServer],
    trusting: Settings,
    valid_from_h: int,
    sentence: str,
) -> None:
    https = https_server("localhost", valid_from_h)
    https.server.add("/x.csv", CSV)
    with pytest.raises(DatasetUnreachable) as refused:
        inspect_dataset(https.url("/x.csv"), trusting)
    assert refused.value.error == sentence


def test_the_default_trust_store_refuses_a_private_ca(
    https_server: Callable[..., FakeHttpsServer], settings: Settings
) -> None:
    assert settings.dataset_ca_bundle == ""
    https = https_server("localhost")
    https.server.add("/x.csv", CSV)
    with pytest.raises(DatasetUnreachable) as refused:
        inspect_dataset(https.url("/x.csv"), settings)
    assert refused.value.error == CERT_NOT_TRUSTED
    assert refused.value.details
    assert https.server.requests["/x.csv"] == 0


def test_the_ca_bundle_replaces_the_default_trust_store(ca: FakeCA) -> None:
    assert [entry["subject"] for entry in tls_context(str(ca.bundle)).get_ca_certs()] == [
        ((("commonName", "chatdf test CA"),),)
    ]
    assert len(tls_context().get_ca_certs()) > 1  # the default store: the public CAs


@pytest.mark.parametrize("content", [None, b"", b"not a certificate\n"])
def test_an_unreadable_ca_bundle_is_a_sentence(
    settings: Settings, tmp_path: Path, content: bytes | None
) -> None:
    bundle = tmp_path / "internal-ca.pem"
    if content is not None:
        bundle.write_bytes(content)
    broken = settings.model_copy(update={"dataset_ca_bundle": str(bundle)})
    with pytest.raises(DatasetError) as refused:
        inspect_dataset("https://localhost:1/x.csv", broken)
    assert refused.value.error == CA_BUNDLE_UNREADABLE
    assert refused.value.details
    assert str(tmp_path) not in refused.value.details  # the server's layout stays private


def test_https_to_a_plain_http_server_fails_clearly(
    data_server: FakeDataServer, trusting: Settings
) -> None:
    data_server.add("/x.csv", CSV)
    plain_port = data_server.port
    with pytest.raises(DatasetUnreachable) as failed:
        inspect_dataset(f"https://localhost:{plain_port}/x.csv", trusting)
    assert failed.value.error == (
        "Could not reach the dataset URL: the secure connection failed (certificate or TLS problem)"
    )


@pytest.fixture
def inside() -> Iterator[FakeDataServer]:
    """A plain HTTP fake on 127.0.0.2: an internal host next to the one playing public."""
    server = FakeDataServer(host="127.0.0.2").start()
    server.add("/data.csv", CSV)
    yield server
    server.stop()


@pytest.fixture
def moved(https_server: Callable[..., FakeHttpsServer], inside: FakeDataServer) -> FakeHttpsServer:
    """An HTTPS fake whose /moved redirects to plain HTTP on the internal host."""
    https = https_server("localhost")
    https.server.add("/moved", redirect_to=inside.url("/data.csv"))
    return https


def _inspect_moved(moved: FakeHttpsServer, trusting: Settings, allowed: list[str]) -> int:
    guarded = trusting.model_copy(update={"dataset_allow_private_hosts": False})
    with GuardedClient(guarded, allowed_networks=allowed, resolver=FakeResolver()) as client:
        return int(inspect_dataset(moved.url("/moved"), guarded, client=client)["row_count"])


def test_a_redirect_from_https_to_a_private_http_host_is_refused(
    moved: FakeHttpsServer, inside: FakeDataServer, trusting: Settings
) -> None:
    """127.0.0.1 plays a public HTTPS host; its redirect to plain HTTP on 127.0.0.2 is refused."""
    with pytest.raises(DatasetError) as refused:
        _inspect_moved(moved, trusting, ["127.0.0.1/32"])
    assert refused.value.error == PRIVATE_ADDRESS
    assert refused.value.details == "127.0.0.0/8 is Loopback (RFC1122)"
    assert moved.server.requests["/moved"] == 1  # TLS worked; the hop was refused
    assert inside.requests["/data.csv"] == 0


def test_the_same_redirect_is_followed_when_its_target_is_allowed(
    moved: FakeHttpsServer, inside: FakeDataServer, trusting: Settings
) -> None:
    """The control: the refusal above is the address check, not a server that was not there."""
    assert _inspect_moved(moved, trusting, ["127.0.0.1/32", "127.0.0.2/32"]) == 2
    assert inside.requests["/data.csv"] >= 1


def test_download_over_https(
    https_server: Callable[..., FakeHttpsServer], trusting: Settings
) -> None:
    https = https_server("localhost")
    https.server.add("/x.csv", CSV)
    sink = io.BytesIO()
    with GuardedClient(trusting) as client:
        assert client.download(https.url("/x.csv"), sink) == len(CSV)
    assert sink.getvalue() == CSV
