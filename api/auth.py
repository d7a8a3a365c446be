"""Auth routes: dev login, Google OAuth (authorization code + CSRF state), me, logout."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from api.deps import COOKIE_NAME, CurrentUser, DbDep, SettingsDep, token_from
from chatdf.db import Database, User
from chatdf.errors import BadRequest, Forbidden, NotFound, UpstreamFailed
from chatdf.settings import Settings, is_loopback_host
from chatdf.store import (
    DEV_USER_EMAIL,
    claim_for_google,
    create_oauth_state,
    create_session,
    delete_session,
    find_user,
    get_or_create_user,
    made_by_dev_login,
    pop_oauth_state,
    redeem_referral_key,
    referral_key_usable,
    user_json,
)

router = APIRouter(prefix="/auth", tags=["auth"])

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
) -> tuple[str, dict[str, Any]]:
    """Finds or creates the user (spending a referral key on sign-up) and opens a session.

    `method` is "dev" or "google". Dev login never signs in an account it did not create;
    Google sign-in claims a dev-made account of the same (now proven) email.
    """
    with db.session() as s:
        existing = find_user(s, email)
        if existing is not None and method == "dev" and not made_by_dev_login(existing):
            raise Forbidden(DEV_LOGIN_NOT_YOURS)
        if existing is not None and method == "google":
            claim_for_google(s, existing)
        if existing is None and settings.require_referral_key and not referral_key_usable(s, key):
            raise Forbidden("A valid, unused referral key is required to sign up")
        user, created = get_or_create_user(s, email, name, avatar, signed_up_with=method)
        if created and settings.require_referral_key:
            redeem_referral_key(s, key, user.id)
        token = create_session(s, user.id, settings.session_ttl_s)
        return token, user_json(user)


@router.post("/dev-login")
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


@router.post("/google")
def google_login(
    db: DbDep, settings: SettingsDep, body: GoogleLoginBody | None = None
) -> dict[str, str]:
    """Starts the Google OAuth flow: returns the consent URL carrying a CSRF state."""
    body = body or GoogleLoginBody()
    with db.session() as s:
        state = create_oauth_state(s, body.referral_key)
    params = {
        "client_id": settings.google_client_id,
        "redirect_uri": settings.google_redirect_uri,
        "response_type": "code",
        "scope": "openid email profile",
        "state": state,
        "access_type": "online",
        "prompt": "select_account",
    }
    return {"redirect_url": f"{settings.google_auth_url}?{urlencode(params)}"}


@router.get("/google/callback")
async def google_callback(
    db: DbDep, settings: SettingsDep, code: str = "", state: str = ""
) -> RedirectResponse:
    """Finishes OAuth: checks state, trades the code for the profile, signs the user in."""
    with db.session() as s:
        saved = pop_oauth_state(s, state, settings.oauth_state_ttl_s)
    if saved is None:
        raise Forbidden("OAuth state mismatch; start the sign-in again")
    if not code:
        raise BadRequest("Missing authorization code")
    profile = await fetch_google_profile(settings, code)
    email = str(profile.get("email") or "").lower()
    if not email or profile.get("email_verified") is False:
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
    )
    response = RedirectResponse(settings.app_url, status_code=302)
    set_session_cookie(response, token, settings)
    return response


async def fetch_google_profile(settings: Settings, code: str) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            tok = await client.post(
                settings.google_token_url,
                data={
                    "code": code,
                    "client_id": settings.google_client_id,
                    "client_secret": settings.google_client_secret.get_secret_value(),
                    "redirect_uri": settings.google_redirect_uri,
                    "grant_type": "authorization_code",
                },
            )
            if tok.status_code != 200:
                raise BadRequest("Invalid authorization code", tok.text[:200])
            access = tok.json().get("access_token")
            info = await client.get(
                settings.google_userinfo_url, headers={"Authorization": f"Bearer {access}"}
            )
            if info.status_code != 200:
                raise BadRequest("Could not read the Google profile", info.text[:200])
            data: dict[str, Any] = info.json()
            return data
    except httpx.HTTPError as exc:
        raise UpstreamFailed("Could not reach Google to finish sign-in", str(exc)) from None


@router.get("/me")
def me(user: CurrentUser, db: DbDep) -> dict[str, Any]:
    """The signed-in user's profile."""
    with db.session() as s:
        row = s.get(User, user.id)
        if row is None:
            raise NotFound("User not found")
        return user_json(row)


@router.post("/logout")
def logout(request: Request, response: Response, user: CurrentUser, db: DbDep) -> dict[str, bool]:
    """Ends this session and clears the cookie."""
    token, _ = token_from(request)
    with db.session() as s:
        delete_session(s, token)
    response.delete_cookie(COOKIE_NAME, path="/")
    return {"success": True}
