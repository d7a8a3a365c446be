"""Request dependencies: settings, database, the signed-in user, and the client of their actor."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, WebSocket

from actors.session_client import SessionClient
from api.checks import AuthUser, OwnerChecker, SessionChecker
from chatdf.db import Database
from chatdf.errors import Unauthorized
from chatdf.settings import Settings

COOKIE_NAME = "session_token"
NOT_SIGNED_IN = "Not signed in or the session has expired"


# The dependencies are coroutines: FastAPI runs a plain `def` dependency on a worker thread, and
# the hop costs more than reading an attribute (and, under a burst, threads contend for the GIL).


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_actor(request: Request) -> SessionClient:
    client: SessionClient = request.app.state.actor
    return client


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
DbDep = Annotated[Database, Depends(get_db)]
ActorDep = Annotated[SessionClient, Depends(get_actor)]  # the users' session actors


def token_from(request: Request | WebSocket, query_token: str | None = None) -> tuple[str, str]:
    """The presented session token and where it came from: query, bearer or cookie."""
    if query_token:
        return query_token, "query"
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), "bearer"
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie:
        return cookie, "cookie"
    return "", "none"


async def current_user(request: Request) -> AuthUser:
    """The signed-in user, from the httpOnly cookie or a Bearer header; 401 otherwise."""
    checked: AuthUser | None = getattr(request.state, "auth_user", None)
    if checked is not None:  # the app's middleware authenticated before routing
        return checked
    token, _source = token_from(request)
    checker: SessionChecker = request.app.state.session_check
    user = await checker.check(token)
    if user is None:
        raise Unauthorized(NOT_SIGNED_IN)
    return user


CurrentUser = Annotated[AuthUser, Depends(current_user)]


async def owned_conversation_id(conversation_id: str, user: CurrentUser, request: Request) -> str:
    """The path's conversation id, once it is known to be the user's (404 otherwise)."""
    checker: OwnerChecker = request.app.state.owner_check
    await checker.check(user.id, conversation_id)
    return conversation_id


OwnedConversationId = Annotated[str, Depends(owned_conversation_id)]
