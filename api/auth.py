"""Auth routes: dev login, Google OAuth (authorization code + CSRF state), me, logout."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from api.deps import COOKIE_NAME, CurrentUser, DbDep, SettingsDep, token_from
from api.errors import error_responses
from api.rate_limit import SignInRateLimit
from api.routing import CheckedRoute
from chatdf.db import Database, OAuthState, User
from chatdf.errors import BadRequest, Forbidden, NotFound, UpstreamFailed
from chatdf.schemas import DevLogin, GoogleLogin, Success, UserProfile
from chatdf.settings import Settings, is_loopback_host
from chatdf.store import (
    DEV_USER_EMAIL,
    claim_for_google,
    create_oauth_state,
    create_session,
    delete_session,
    find_google_user,
    find_user,
    get_or_create_user,
    hash_secret,
    made_by_dev_login,
    pop_oauth_state,
    redeem_referral_key,
    referral_key_usable,
    user_json,
)
from ws.endpoint import CLOSE_UNAUTHORIZED

router = APIRouter(prefix="/auth", tags=["auth"], route_class=CheckedRoute)

OAUTH_COOKIE = "oauth_browser"  # binds a sign-in's state to the browser that started it

DEV_LOGIN_NOT_YOURS = "Dev login signs in only accounts that dev login created"
DEV_LOGIN_LOCAL_ONLY = (
    "Dev login answers only requests made on this machine, not through a proxy "
    "(DEV_LOGIN_ALLOW_REMOTE=true lifts this)"
)
# Any of these means a proxy relayed the request: its real client is elsewhere.
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


def from_this_machine(request: Request) -> bool:
    """A loopback peer that no proxy relayed (uvicorn replaces a trusted proxy's peer address
    with X-Forwarded-For, so a relayed request usually fails the first test already)."""
    client = request.client.host if request.client else ""
    relayed = any(name in request.headers for name in FORWARDING_HEADERS)
    return is_loopback_host(client) and not relayed


class DevLoginBody(BaseModel):
    email: str | None = Field(default=None, max_length=320)
    name: str | None = Field(default=None, max_length=200)
    referral_key: str | None = Field(default=None, max_length=200)


class GoogleLoginBody(BaseModel):
    referral_key: str | None = Field(default=None, max_length=200)


def set_session_cookie(response: Response, token: str, settings: Settings) -> None:
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=settings.session_ttl_s,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
    )


def sign_in(
    db: Database,
    settings: Settings,
    email: str,
    name: str,
    avatar: str | None,
    key: str | None,
    method: str,
    google_sub: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Finds or creates the user (spending a referral key on sign-up) and opens a session.

    `method` is "dev" or "google". Google accounts are keyed on Google's stable `sub`; dev
    login never signs in an account it did not create; Google sign-in claims a dev-made
    account of the same (now proven) email.
    """
    with db.session() as s:
        if method == "google" and google_sub:
            existing = find_google_user(s, google_sub, email)
        else:
            existing = find_user(s, email)
        if existing is not None and method == "dev" and not made_by_dev_login(existing):
            raise Forbidden(DEV_LOGIN_NOT_YOURS)
        if existing is not None and method == "google":
            claim_for_google(s, existing)
        if existing is None and settings.require_referral_key and not referral_key_usable(s, key):
            raise Forbidden("A valid, unused referral key is required to sign up")
        if existing is not None:
            user, created = existing, False
        else:
            user, created = get_or_create_user(
                s, email, name, avatar, signed_up_with=method, google_sub=google_sub
            )
        if created and settings.require_referral_key:
            redeem_referral_key(s, key, user.id)
        token = create_session(s, user.id, settings.session_ttl_s)
        return token, user_json(user)


@router.post(
    "/dev-login",
    dependencies=[SignInRateLimit],
    response_model=DevLogin,
    responses=error_responses(400, 403, 404, 413, 429, 503),
)
def dev_login(
    request: Request,
    response: Response,
    db: DbDep,
    settings: SettingsDep,
    body: DevLoginBody | None = None,
) -> dict[str, Any]:
    """Signs in without Google (local development only); no email means the local dev user."""
    if not settings.dev_login_enabled:
        raise NotFound("Dev login is disabled")
    if not settings.dev_login_allow_remote and not from_this_machine(request):
        raise Forbidden(DEV_LOGIN_LOCAL_ONLY)
    body = body or DevLoginBody()
    email = (body.email or DEV_USER_EMAIL).strip().lower()
    if "@" not in email or len(email) < 3:
        raise BadRequest("Invalid email address")
    token, user = sign_in(db, settings, email, body.name or "", None, body.referral_key, "dev")
    set_session_cookie(response, token, settings)
    return {"token": token, "user": user}


@router.post(
    "/google",
    dependencies=[SignInRateLimit],
    response_model=GoogleLogin,
    responses=error_responses(400, 413, 429, 503),
)
def google_login(
    response: Response, db: DbDep, settings: SettingsDep, body: GoogleLoginBody | None = None
) -> dict[str, str]:
    """Starts the Google OAuth flow: returns the consent URL carrying a CSRF state."""
    body = body or GoogleLoginBody()
    with db.session() as s:
        new = create_oauth_state(s, body.referral_key, settings.oauth_state_ttl_s)
    # The state works only in the browser holding this cookie (login CSRF), and only with
    # the PKCE verifier kept here (a stolen code is useless).
    response.set_cookie(
        OAUTH_COOKIE,
        new.browser_secret,
        max_age=settings.oauth_state_ttl_s,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/auth/google",
    )
    url, _state = google_client(settings).create_authorization_url(
        settings.google_auth_url,
        state=new.state,
        code_verifier=new.code_verifier,
        access_type="online",
        prompt="select_account",
    )
    return {"redirect_url": url}


@router.get(
    "/google/callback",
    dependencies=[SignInRateLimit],
    response_class=RedirectResponse,
    status_code=302,
    responses={
        302: {"description": "Signed in: the session cookie is set, the browser goes to APP_URL"},
        **error_responses(400, 403, 429, 502, 503),
    },
)
async def google_callback(
    request: Request, db: DbDep, settings: SettingsDep, code: str = "", state: str = ""
) -> RedirectResponse:
    """Finishes OAuth: checks state, trades the code for the profile, signs the user in."""
    browser_secret = request.cookies.get(OAUTH_COOKIE)
    saved = await asyncio.to_thread(_pop_state, db, state, browser_secret, settings)
    if saved is None or not saved.code_verifier:
        raise Forbidden("OAuth state mismatch; start the sign-in again")
    if not code:
        raise BadRequest("Missing authorization code")
    profile = await fetch_google_profile(settings, code, saved.code_verifier)
    email = str(profile.get("email") or "").lower()
    sub = str(profile.get("sub") or "")
    if not email or not sub or profile.get("email_verified") is False:
        raise BadRequest("Google did not return a verified email address")
    token, _user = await asyncio.to_thread(
        sign_in,
        db,
        settings,
        email,
        str(profile.get("name") or ""),
        profile.get("picture"),
        saved.referral_key,
        "google",
        sub,
    )
    response = RedirectResponse(settings.app_url, status_code=302)
    set_session_cookie(response, token, settings)
    response.delete_cookie(OAUTH_COOKIE, path="/auth/google")
    return response


def _pop_state(
    db: Database, state: str, browser_secret: str | None, settings: Settings
) -> OAuthState | None:
    with db.session() as s:
        return pop_oauth_state(s, state, browser_secret, settings.oauth_state_ttl_s)


def google_client(settings: Settings) -> AsyncOAuth2Client:
    """Authlib's OAuth 2.0 client for Google: authorization code with PKCE (S256)."""
    return AsyncOAuth2Client(
        client_id=settings.google_client_id,
        client_secret=settings.google_client_secret.get_secret_value(),
        redirect_uri=settings.google_redirect_uri,
        scope="openid email profile",
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_post",
        timeout=10,
    )


async def fetch_google_profile(settings: Settings, code: str, verifier: str) -> dict[str, Any]:
    """Trades the code (with its PKCE verifier) for a token, then reads the OpenID profile."""
    try:
        async with google_client(settings) as client:
            try:
                await client.fetch_token(
                    settings.google_token_url, code=code, code_verifier=verifier
                )
            except OAuthError as exc:
                raise BadRequest("Invalid authorization code", str(exc)[:200]) from None
            info = await client.get(settings.google_userinfo_url)
            if info.status_code != 200:
                raise BadRequest("Could not read the Google profile", info.text[:200])
            data: dict[str, Any] = info.json()
            return data
    except httpx.HTTPError as exc:
        raise UpstreamFailed("Could not reach Google to finish sign-in", str(exc)) from None


@router.get("/me", response_model=UserProfile, responses=error_responses(401, 404, 503))
def me(user: CurrentUser, db: DbDep) -> dict[str, Any]:
    """The signed-in user's profile."""
    with db.session() as s:
        row = s.get(User, user.id)
        if row is None:
            raise NotFound("User not found")
        return user_json(row)


@router.post("/logout", response_model=Success, responses=error_responses(401, 503))
async def logout(
    request: Request, response: Response, user: CurrentUser, db: DbDep
) -> dict[str, bool]:
    """Ends this session and clears the cookie; the session's sockets close with 4001."""
    token, _ = token_from(request)

    def end() -> None:
        with db.session() as s:
            delete_session(s, token)

    await asyncio.to_thread(end)
    # This edge closes them now; other edges within SESSION_CHECK_INTERVAL_S (ws/sessions.py).
    manager = request.app.state.connection_manager
    await manager.close_sessions({hash_secret(token)}, CLOSE_UNAUTHORIZED, "signed out")
    response.delete_cookie(COOKIE_NAME, path="/")
    return {"success": True}
