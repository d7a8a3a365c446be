"""Auth over real HTTP: dev login, Google OAuth against a loopback fake, referral keys, sessions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select, text, update

from api.cli import create_referral_key as cli_create_referral_key
from chatdf.db import Database, OAuthState, ReferralKey, User, UserSession, utcnow
from chatdf.settings import Settings
from chatdf.store import DEV_USER_EMAIL, create_referral_key
from tests.fakes.fake_oauth import FakeOAuthProvider, Profile, s256
from tests.live import LiveServer

Serve = Callable[..., LiveServer]
CALLBACK = "http://127.0.0.1:9/auth/google/callback"  # never dialled: tests call the app directly
APP_URL = "http://127.0.0.1:5173/app"


@pytest.fixture
def serve(ray_session: None, settings: Settings) -> Iterator[Serve]:
    """Starts the real edge with setting overrides (stopped at teardown)."""
    servers: list[LiveServer] = []

    def start(**overrides: Any) -> LiveServer:
        server = LiveServer(settings.model_copy(update=overrides)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.resolved_database_url)
    database.create_schema()
    yield database
    database.dispose()


@pytest.fixture
def google() -> Iterator[FakeOAuthProvider]:
    with FakeOAuthProvider() as provider:
        yield provider


def mint_key(db: Database) -> str:
    with db.session() as s:
        return create_referral_key(s)


def dev_login(server: LiveServer, **body: Any) -> httpx.Response:
    with server.client() as anon:
        return anon.post("/auth/dev-login", json=body)


def session_cookie(response: httpx.Response) -> str:
    """The raw Set-Cookie header for session_token (asserting there is exactly one)."""
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith("session_token=")]
    assert len(headers) == 1, response.headers
    return headers[0]


def cookie_value(header: str) -> str:
    return header.split(";", 1)[0].split("=", 1)[1].strip('"')


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "details"}
    assert isinstance(body["error"], str) and body["error"]
    return body


# Dev login ------------------------------------------------------------------------------------


def test_dev_login_with_email_returns_token_user_and_httponly_cookie(live: LiveServer) -> None:
    r = dev_login(live, email="Ada@Example.com", name="Ada")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"token", "user"}
    assert set(body["user"]) == {"user_id", "email", "name", "avatar_url"}
    assert body["user"]["email"] == "ada@example.com"
    assert body["user"]["name"] == "Ada"
    header = session_cookie(r)
    attrs = {a.strip().lower() for a in header.split(";")[1:]}
    assert "httponly" in attrs
    assert "path=/" in attrs
    assert "samesite=lax" in attrs
    assert f"max-age={7 * 24 * 3600}" in attrs
    assert cookie_value(header) == body["token"]


def test_dev_login_without_email_is_the_one_local_dev_user(live: LiveServer) -> None:
    first = dev_login(live).json()
    second = dev_login(live, email=None).json()
    assert first["user"]["email"] == DEV_USER_EMAIL
    assert first["user"]["user_id"] == second["user"]["user_id"]
    assert first["token"] != second["token"]  # a new session per sign-in


def test_cookie_and_bearer_both_authenticate(live: LiveServer) -> None:
    token = dev_login(live, email="c@example.com").json()["token"]
    with httpx.Client(base_url=live.url, cookies={"session_token": token}) as by_cookie:
        assert by_cookie.get("/auth/me").json()["email"] == "c@example.com"
    with live.client(token) as by_bearer:
        assert by_bearer.get("/auth/me").json()["email"] == "c@example.com"
    # The client that signed in keeps the cookie it was given, as a browser would.
    with live.client() as browser:
        browser.post("/auth/dev-login", json={"email": "b@example.com"})
        assert browser.get("/auth/me").json()["email"] == "b@example.com"


def test_me_shape(live: LiveServer) -> None:
    token, user_id, client = live.login("me@example.com")
    with client:
        r = client.get("/auth/me")
    assert r.status_code == 200
    assert r.json() == {
        "user_id": user_id,
        "email": "me@example.com",
        "name": "me",
        "avatar_url": None,
    }


def test_dev_login_rejects_bad_email(live: LiveServer) -> None:
    for email in ("no-at-sign", "@", "a" * 400 + "@x.io", 5):
        assert_error(dev_login(live, email=email), 400)


def test_dev_login_disabled_is_404(serve: Serve) -> None:
    server = serve(dev_login=False)
    r = dev_login(server, email="x@example.com")
    assert_error(r, 404)
    assert not r.headers.get_list("set-cookie")


def test_dev_login_off_by_default_when_not_bound_to_loopback() -> None:
    assert Settings(host="0.0.0.0").dev_login_enabled is False
    assert Settings(host="127.0.0.1").dev_login_enabled is True
    assert Settings(host="0.0.0.0", dev_login=True).dev_login_enabled is True


# Tokens and sessions ----------------------------------------------------------------------------


def test_token_has_at_least_128_bits_and_is_unique(live: LiveServer) -> None:
    tokens = {dev_login(live, email="t@example.com").json()["token"] for _ in range(5)}
    assert len(tokens) == 5
    for token in tokens:
        # URL-safe base64 carries 6 bits a character: 22 characters hold 128 bits.
        assert len(token) >= 22
        assert all(c.isalnum() or c in "-_" for c in token)


def test_only_the_token_hash_is_stored(live: LiveServer, db: Database) -> None:
    token, user_id, client = live.login("h@example.com")
    client.close()
    with db.session() as s:
        rows = s.execute(text("SELECT * FROM sessions")).all()
        session = s.scalar(select(UserSession).where(UserSession.user_id == user_id))
    assert session is not None
    assert session.token_hash == hashlib.sha256(token.encode()).hexdigest()
    for row in rows:
        assert all(token not in str(value) for value in row)


def test_expired_session_is_401(live: LiveServer, db: Database) -> None:
    token, user_id, client = live.login("old@example.com")
    with client:
        assert client.get("/auth/me").status_code == 200
        with db.session() as s:
            s.execute(
                update(UserSession)
                .where(UserSession.user_id == user_id)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        assert_error(client.get("/auth/me"), 401)
        assert_error(client.get("/conversations"), 401)


def test_session_is_extended_on_use(live: LiveServer, db: Database) -> None:
    token, user_id, client = live.login("slide@example.com")
    soon = utcnow() + timedelta(hours=1)
    with db.session() as s:
        s.execute(update(UserSession).where(UserSession.user_id == user_id).values(expires_at=soon))
    with client:
        assert client.get("/conversations").status_code == 200
    live.call(live.app.state.session_check.written())  # written after the answer
    with db.session() as s:
        expires = s.scalar(select(UserSession.expires_at).where(UserSession.user_id == user_id))
    assert expires is not None
    assert expires > utcnow() + timedelta(days=6)


def test_logout_deletes_session_and_clears_cookie(live: LiveServer, db: Database) -> None:
    token, user_id, client = live.login("bye@example.com")
    other_token = dev_login(live, email="bye@example.com").json()["token"]
    with client:
        r = client.post("/auth/logout")
        assert r.status_code == 200
        assert r.json() == {"success": True}
        header = session_cookie(r)
        assert cookie_value(header) == ""
        assert "max-age=0" in header.lower()
        assert_error(client.get("/auth/me"), 401)
        assert_error(client.post("/auth/logout"), 401)
    with db.session() as s:
        hashes = set(s.scalars(select(UserSession.token_hash)))
    assert hashlib.sha256(token.encode()).hexdigest() not in hashes
    # Only this session ends; the same user's other sessions (other devices) live on.
    with live.client(other_token) as other:
        assert other.get("/auth/me").status_code == 200


BAD_CREDENTIALS = [
    {"Authorization": "Bearer not-a-real-token"},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer " + "x" * 5000},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Cookie": "session_token=forged"},
    {"Cookie": "session_token="},
]


def test_bad_credentials_are_401(live: LiveServer) -> None:
    for headers in BAD_CREDENTIALS:
        with httpx.Client(base_url=live.url, headers=headers) as client:
            assert_error(client.get("/auth/me"), 401)


# Referral keys with dev login -------------------------------------------------------------------


def test_dev_login_referral_rules(serve: Serve, db: Database, settings: Settings) -> None:
    server = serve(require_referral_key=True)
    assert_error(dev_login(server, email="new@example.com"), 403)
    assert_error(dev_login(server, email="new@example.com", referral_key="made-up"), 403)
    key = mint_key(db)
    assert dev_login(server, email="new@example.com", referral_key=key).status_code == 200
    assert_error(dev_login(server, email="second@example.com", referral_key=key), 403)
    # Existing users sign in again without any key.
    assert dev_login(server, email="new@example.com").status_code == 200
    # The CLI's key works the same way.
    cli_key = cli_create_referral_key(settings)
    assert dev_login(server, email="second@example.com", referral_key=cli_key).status_code == 200
    with db.session() as s:
        users = {u.email: u.id for u in s.scalars(select(User))}
        used = {k.used_by for k in s.scalars(select(ReferralKey))}
    assert set(users) == {"new@example.com", "second@example.com"}
    assert used == set(users.values())


def test_refused_sign_up_creates_no_user(serve: Serve, db: Database) -> None:
    server = serve(require_referral_key=True)
    assert_error(dev_login(server, email="nokey@example.com"), 403)
    with db.session() as s:
        assert s.scalar(select(User).where(User.email == "nokey@example.com")) is None


# Google OAuth ---------------------------------------------------------------------------------


def google_server(serve: Serve, google: FakeOAuthProvider, **overrides: Any) -> LiveServer:
    return serve(app_url=APP_URL, **google.settings_overrides(CALLBACK), **overrides)


def start_google(server: LiveServer, referral_key: str | None = None) -> dict[str, str]:
    """POST /auth/google; returns the consent URL's query parameters.

    The browser-binding cookie it sets is kept by state, so `callback` comes back from the
    same "browser" unless a test says otherwise.
    """
    body = {"referral_key": referral_key} if referral_key else {}
    with server.client() as anon:
        r = anon.post("/auth/google", json=body)
    assert r.status_code == 200, r.text
    url = r.json()["redirect_url"]
    assert url.startswith(server.settings.google_auth_url + "?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    BINDINGS[params["state"]] = r.cookies.get("oauth_browser") or ""
    return params


BINDINGS: dict[str, str] = {}


def callback(
    server: LiveServer, code: str, state: str, *, browser: str | None = None
) -> httpx.Response:
    """GET the callback from the browser that started `state` (or from `browser`'s cookie)."""
    secret = BINDINGS.get(state, "") if browser is None else browser
    cookies = {"oauth_browser": secret} if secret else {}
    with httpx.Client(base_url=server.url, cookies=cookies, timeout=30) as anon:
        return anon.get("/auth/google/callback", params={"code": code, "state": state})


def test_google_redirect_url_carries_state_and_client_id(
    serve: Serve, google: FakeOAuthProvider
) -> None:
    server = google_server(serve, google)
    first, second = start_google(server), start_google(server)
    assert first["client_id"] == google.client_id
    assert first["redirect_uri"] == CALLBACK
    assert first["response_type"] == "code"
    assert set(first["scope"].split()) >= {"openid", "email", "profile"}
    assert len(first["state"]) >= 22
    assert first["state"] != second["state"]


def test_google_callback_signs_in_and_redirects_with_cookie(
    serve: Serve, google: FakeOAuthProvider
) -> None:
    server = google_server(serve, google)
    params = start_google(server)
    profile = Profile(email="Grace@Example.com", name="Grace Hopper")
    r = callback(server, google.register_code(profile), params["state"])
    assert r.status_code == 302, r.text
    assert r.headers["location"] == APP_URL
    token = cookie_value(session_cookie(r))
    assert "httponly" in session_cookie(r).lower()
    with httpx.Client(base_url=server.url, cookies={"session_token": token}) as browser:
        me = browser.get("/auth/me").json()
    assert me["email"] == "grace@example.com"
    assert me["name"] == "Grace Hopper"
    assert me["avatar_url"] == profile.picture
    # The app traded the code server-side with its client secret and redirect URI, and with
    # the PKCE verifier behind the consent URL's challenge.
    (trade,) = google.token_requests
    assert trade["client_secret"] == google.client_secret
    assert trade["redirect_uri"] == CALLBACK
    assert params["code_challenge_method"] == "S256"
    assert s256(trade["code_verifier"]) == params["code_challenge"]


def test_google_consent_leg_round_trip(serve: Serve, google: FakeOAuthProvider) -> None:
    """Follows the consent URL to the fake, which redirects back with code and state."""
    server = google_server(serve, google)
    google.next_profile = Profile(email="round@example.com")
    with server.client() as browser:
        consent = browser.post("/auth/google", json={}).json()["redirect_url"]
        back = httpx.get(consent)
        assert back.status_code == 302
        query = parse_qs(urlsplit(back.headers["location"]).query)
        r = browser.get(
            "/auth/google/callback", params={"code": query["code"][0], "state": query["state"][0]}
        )
        assert r.status_code == 302
        assert browser.get("/auth/me").json()["email"] == "round@example.com"


def test_google_state_mismatch_and_reuse_are_403(serve: Serve, google: FakeOAuthProvider) -> None:
    server = google_server(serve, google)
    profile = Profile(email="csrf@example.com")
    assert_error(callback(server, google.register_code(profile), "forged-state"), 403)
    assert_error(callback(server, google.register_code(profile), ""), 403)
    assert_error(callback(server, google.register_code(profile), "s" * 500), 403)
    state = start_google(server)["state"]
    assert callback(server, google.register_code(profile), state).status_code == 302
    assert_error(callback(server, google.register_code(profile), state), 403)


def test_google_expired_state_is_403(serve: Serve, google: FakeOAuthProvider) -> None:
    server = google_server(serve, google, oauth_state_ttl_s=0)
    state = start_google(server)["state"]
    assert_error(callback(server, google.register_code(Profile(email="e@x.io")), state), 403)


def test_google_bad_code_is_400(serve: Serve, google: FakeOAuthProvider) -> None:
    server = google_server(serve, google)
    assert_error(callback(server, "not-a-code", start_google(server)["state"]), 400)
    assert_error(callback(server, "", start_google(server)["state"]), 400)
    # A code works once: replaying it fails at the provider.
    code = google.register_code(Profile(email="once@example.com"))
    assert callback(server, code, start_google(server)["state"]).status_code == 302
    assert_error(callback(server, code, start_google(server)["state"]), 400)


def test_google_unverified_email_is_400(serve: Serve, google: FakeOAuthProvider) -> None:
    server = google_server(serve, google)
    code = google.register_code(Profile(email="unverified@example.com", email_verified=False))
    r = callback(server, code, start_google(server)["state"])
    assert_error(r, 400)
    assert not r.headers.get_list("set-cookie")


def test_google_referral_rules(serve: Serve, google: FakeOAuthProvider, db: Database) -> None:
    server = google_server(serve, google, require_referral_key=True)

    def sign_in(email: str, key: str | None) -> httpx.Response:
        state = start_google(server, key)["state"]
        return callback(server, google.register_code(Profile(email=email)), state)

    assert_error(sign_in("g1@example.com", None), 403)
    assert_error(sign_in("g1@example.com", "made-up"), 403)
    key = mint_key(db)
    assert sign_in("g1@example.com", key).status_code == 302
    assert_error(sign_in("g2@example.com", key), 403)
    assert sign_in("g1@example.com", None).status_code == 302
    with db.session() as s:
        assert {u.email for u in s.scalars(select(User))} == {"g1@example.com"}


# Dev login cannot take over accounts (issue 10) -------------------------------------------


def test_dev_login_cannot_sign_in_a_google_account(
    serve: Serve, google: FakeOAuthProvider, db: Database
) -> None:
    server = google_server(serve, google)
    params = start_google(server)
    r = callback(server, google.register_code(Profile(email="victim@example.com")), params["state"])
    assert r.status_code == 302, r.text
    attempt = dev_login(server, email="victim@example.com")
    assert_error(attempt, 403)
    assert attempt.json()["error"] == "Dev login signs in only accounts that dev login created"
    assert "set-cookie" not in attempt.headers


def test_google_sign_in_claims_a_dev_made_account_and_ends_its_sessions(
    serve: Serve, google: FakeOAuthProvider
) -> None:
    """An account pre-made through dev login with someone's email: once Google proves the
    email, the old dev sessions stop working and dev login no longer reaches the account."""
    server = google_server(serve, google)
    squatter = dev_login(server, email="owner@example.com").json()["token"]
    params = start_google(server)
    r = callback(server, google.register_code(Profile(email="owner@example.com")), params["state"])
    assert r.status_code == 302, r.text
    with server.client(token=squatter) as client:
        assert client.get("/auth/me").status_code == 401
    assert_error(dev_login(server, email="owner@example.com"), 403)


@pytest.mark.parametrize(
    "header",
    [
        {"X-Forwarded-For": "203.0.113.7"},
        {"Forwarded": "for=203.0.113.7"},
        {"X-Real-IP": "203.0.113.7"},
        {"X-Forwarded-Host": "chat.example.com"},
    ],
)
def test_dev_login_refuses_requests_relayed_by_a_proxy(
    serve: Serve, header: dict[str, str]
) -> None:
    server = serve()
    with server.client() as anon:
        r = anon.post("/auth/dev-login", json={"email": "someone@example.com"}, headers=header)
    assert_error(r, 403)
    assert "not through a proxy" in r.json()["error"]
    with server.client() as anon:  # the same request made on this machine works
        assert (
            anon.post("/auth/dev-login", json={"email": "someone@example.com"}).status_code == 200
        )


def test_dev_login_allow_remote_lifts_the_proxy_rule(serve: Serve) -> None:
    server = serve(dev_login_allow_remote=True)
    with server.client() as anon:
        r = anon.post(
            "/auth/dev-login",
            json={"email": "x@example.com"},
            headers={"X-Forwarded-For": "1.2.3.4"},
        )
    assert r.status_code == 200


# Login CSRF, PKCE and Google's stable id (issue 10) -----------------------------------------


def test_a_state_works_only_in_the_browser_that_started_it(
    serve: Serve, google: FakeOAuthProvider
) -> None:
    """Login CSRF: an attacker's own callback URL (their code, their state) opened in the
    victim's browser, which never started that sign-in, signs nobody in."""
    server = google_server(serve, google)
    state = start_google(server)["state"]
    code = google.register_code(Profile(email="attacker@example.com"))
    r = callback(server, code, state, browser="")
    assert_error(r, 403)
    assert not r.headers.get_list("set-cookie") or "session_token" not in r.headers["set-cookie"]
    other = start_google(server)["state"]  # another browser's cookie does not fit either
    assert_error(callback(server, code, state, browser=BINDINGS[other]), 403)


def test_a_code_without_its_pkce_verifier_is_refused(
    serve: Serve, google: FakeOAuthProvider
) -> None:
    """The consent leg registers the code with the URL's S256 challenge: a code traded under
    another sign-in's state (so another verifier) fails at the provider."""
    server = google_server(serve, google)
    google.next_profile = Profile(email="pkce@example.com")
    consent = start_google(server)
    back = httpx.get(server.settings.google_auth_url, params=consent)
    code = parse_qs(urlsplit(back.headers["location"]).query)["code"][0]
    other_state = start_google(server)["state"]
    assert_error(callback(server, code, other_state), 400)


def test_accounts_are_keyed_on_googles_sub(
    serve: Serve, google: FakeOAuthProvider, db: Database
) -> None:
    server = google_server(serve, google)

    def sign_in(profile: Profile) -> httpx.Response:
        return callback(server, google.register_code(profile), start_google(server)["state"])

    assert sign_in(Profile(email="old@example.com", sub="sub-1")).status_code == 302
    # The same Google account with a changed address is the same chatdf account.
    assert sign_in(Profile(email="new@example.com", sub="sub-1")).status_code == 302
    # A different Google account that now holds the old address does not get it.
    assert sign_in(Profile(email="new@example.com", sub="sub-2")).status_code == 403
    with db.session() as s:
        users = [(u.email, u.google_sub) for u in s.scalars(select(User))]
    assert users == [("new@example.com", "sub-1")]


def test_oauth_states_and_sessions_do_not_pile_up(
    serve: Serve, google: FakeOAuthProvider, db: Database
) -> None:
    server = google_server(serve, google, oauth_state_ttl_s=0)
    for _ in range(5):
        start_google(server)
    with db.session() as s:  # each start purged the expired ones before adding its own
        assert (s.scalar(select(func.count()).select_from(OAuthState)) or 0) <= 1
    old = dev_login(server, email="purge@example.com").json()["token"]
    old_hash = hashlib.sha256(old.encode()).hexdigest()
    with db.session() as s:
        s.execute(
            update(UserSession)
            .where(UserSession.token_hash == old_hash)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    dev_login(server, email="purge@example.com")  # any new session purges expired ones
    with db.session() as s:
        assert s.scalar(select(UserSession).where(UserSession.token_hash == old_hash)) is None


def test_sign_in_routes_are_rate_limited_per_address(serve: Serve) -> None:
    server = serve(auth_rate_limit="3/minute")
    codes = [dev_login(server, email="rl@example.com").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    body = dev_login(server, email="rl@example.com").json()
    assert body["error"].startswith("Too many sign-in attempts")
