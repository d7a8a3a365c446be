"""TLS for dataset URLs: the verifying context (default store or DATASET_CA_BUNDLE) and the
sentences a person reads when a server's certificate is refused."""

from __future__ import annotations

import functools
import os
import ssl

import httpx

from chatdf.errors import DatasetError

CA_BUNDLE_UNREADABLE = "Dataset URLs cannot be loaded: the server's CA bundle could not be read"
# OpenSSL verify codes (X509_V_ERR_*) that get their own sentence; every other one is "not trusted".
_CERT_SENTENCES = {
    62: "The dataset server's certificate is not valid for its host name",  # HOSTNAME_MISMATCH
    64: "The dataset server's certificate is not valid for its address",  # IP_ADDRESS_MISMATCH
    10: "The dataset server's certificate has expired",  # CERT_HAS_EXPIRED
    9: "The dataset server's certificate is not valid yet",  # CERT_NOT_YET_VALID
}
CERT_NOT_TRUSTED = "The dataset server's certificate is not trusted"


def tls_context(ca_bundle: str = "") -> ssl.SSLContext:
    """The verifying TLS context: the default trust store, or only the CAs in `ca_bundle` (PEM).

    Host names are checked by the context (`check_hostname`); which name is checked is httpcore's
    business: it passes the URL's host to `start_tls`, never the pinned address.
    """
    if not ca_bundle:
        return _cached_tls_context("", None)
    try:
        found = os.stat(ca_bundle)
    except OSError as missing:
        # The path stays out of `details`: they reach the user, the server's layout should not.
        raise DatasetError(CA_BUNDLE_UNREADABLE, missing.strerror) from None
    # Keyed by mtime and size so a rotated bundle is picked up without restarting the workers.
    return _cached_tls_context(ca_bundle, (found.st_mtime_ns, found.st_size))


@functools.lru_cache(maxsize=4)
def _cached_tls_context(ca_bundle: str, version: tuple[int, int] | None) -> ssl.SSLContext:
    # Loading a CA bundle costs ~70 ms; one verifying context per process serves every client.
    if not ca_bundle:
        return httpx.create_ssl_context()
    try:
        return ssl.create_default_context(cafile=ca_bundle)  # cafile given: no default CAs
    except (OSError, ValueError) as unreadable:  # ssl.SSLError is an OSError: not PEM, no CA
        reason = getattr(unreadable, "strerror", None) or str(unreadable)
        raise DatasetError(CA_BUNDLE_UNREADABLE, reason) from None


def certificate_failure(failed: BaseException) -> tuple[str, str] | None:
    """(sentence, OpenSSL's text) when `failed` is a refused certificate, else None."""
    certificate = _certificate_error(failed)
    if certificate is None:
        return None
    return (
        _CERT_SENTENCES.get(certificate.verify_code, CERT_NOT_TRUSTED),
        certificate.verify_message,
    )


def _certificate_error(failed: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure under httpx's and httpcore's wrappers, if any."""
    seen: BaseException | None = failed
    for _ in range(8):  # a chain of causes is short; a cycle must not hang us
        if seen is None or isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
