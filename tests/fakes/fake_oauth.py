"""A loopback fake of Google's OAuth 2.0 endpoints (authorize, token, userinfo) for auth tests."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from pydantic import SecretStr


def s256(verifier: str) -> str:
    """PKCE's S256 code challenge of a verifier (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass
class Profile:
    """What the fake's /userinfo answers for a signed-in Google account (OpenID claims)."""

    email: str
    name: str = "Test User"
    picture: str | None = "https://example.invalid/avatar.png"
    email_verified: bool = True
    sub: str = ""  # Google's stable account id; by default one per email, as for one account

    def __post_init__(self) -> None:
        if not self.sub:
            self.sub = hashlib.sha256(self.email.lower().encode()).hexdigest()[:21]

    def claims(self) -> dict[str, Any]:
        return {
            "sub": self.sub,
            "email": self.email,
            "email_verified": self.email_verified,
            "name": self.name,
            "picture": self.picture,
        }


class FakeOAuthProvider:
    """Google's authorization-code endpoints on 127.0.0.1, driven by codes a test registers.

    `/token` trades a registered code (once) for an access token and answers 400
    `invalid_grant` for anything else; `/userinfo` answers the profile behind a Bearer access
    token, 401 otherwise. `/authorize` redirects straight back with a code for the profile set
    by `next_profile`, like a consent screen the user clicked through.
    """

    client_id = "fake-client-id.apps.googleusercontent.com"
    client_secret = "fake-client-secret"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._codes: dict[str, Profile] = {}
        self._challenges: dict[str, str] = {}
        self._tokens: dict[str, Profile] = {}
        self.next_profile: Profile | None = None
        self.token_requests: list[dict[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        # A short poll keeps shutdown() (which waits out one poll) from slowing every test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # Lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeOAuthProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOAuthProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def settings_overrides(self, redirect_uri: str) -> dict[str, Any]:
        """The Settings fields that point the app at this provider."""
        return {
            "google_client_id": self.client_id,
            "google_client_secret": SecretStr(self.client_secret),
            "google_redirect_uri": redirect_uri,
            "google_auth_url": f"{self.url}/authorize",
            "google_token_url": f"{self.url}/token",
            "google_userinfo_url": f"{self.url}/userinfo",
        }

    # Test controls -----------------------------------------------------------------------

    def register_code(
        self, profile: Profile, code: str | None = None, challenge: str | None = None
    ) -> str:
        """A single-use authorization code that signs in as `profile`.

        With a PKCE `challenge` (S256, from the consent URL) the code trades only together
        with the verifier behind it, as at Google; without, any verifier is taken.
        """
        code = code or secrets.token_urlsafe(16)
        with self._lock:
            self._codes[code] = profile
            if challenge is not None:
                self._challenges[code] = challenge
        return code

    # Endpoint logic (called from the handler thread) -------------------------------------

    def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.token_requests.append(form)
            if form.get("grant_type") != "authorization_code":
                return 400, {"error": "unsupported_grant_type"}
            if (form.get("client_id"), form.get("client_secret")) != (
                self.client_id,
                self.client_secret,
            ):
                return 401, {"error": "invalid_client"}
            profile = self._codes.pop(form.get("code", ""), None)
            if profile is None:
                return 400, {"error": "invalid_grant", "error_description": "Bad code"}
            challenge = self._challenges.pop(form.get("code", ""), None)
            if challenge is not None and s256(form.get("code_verifier", "")) != challenge:
                return 400, {"error": "invalid_grant", "error_description": "Bad verifier"}
            access = secrets.token_urlsafe(24)
            self._tokens[access] = profile
        return 200, {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 3599,
            "scope": "openid email profile",
        }

    def userinfo(self, authorization: str) -> tuple[int, dict[str, Any]]:
        access = authorization[7:] if authorization.startswith("Bearer ") else ""
        with self._lock:
            profile = self._tokens.get(access)
        if profile is None:
            return 401, {"error": "invalid_token"}
        return 200, profile.claims()

    def authorize(self, query: dict[str, str]) -> str:
        """The redirect a consent screen would send the browser to."""
        profile = self.next_profile or Profile(email="someone@example.com")
        code = self.register_code(profile, challenge=query.get("code_challenge"))
        params = {"code": code, "state": query.get("state", "")}
        return f"{query.get('redirect_uri', '')}?{urlencode(params)}"


def _handler_for(provider: FakeOAuthProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep test output clean

        def _send_json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            parts = urlsplit(self.path)
            if parts.path == "/userinfo":
                self._send_json(*provider.userinfo(self.headers.get("Authorization", "")))
            elif parts.path == "/authorize":
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                self.send_response(302)
                self.send_header("Location", provider.authorize(query))
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send_json(404, {"error": "not_found"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if urlsplit(self.path).path != "/token":
                self._send_json(404, {"error": "not_found"})
                return
            form = {k: v[0] for k, v in parse_qs(raw).items()}
            self._send_json(*provider.exchange(form))

    return Handler
