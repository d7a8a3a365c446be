"""Request dependencies: settings, database, the signed-in user, and calls to their actor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, WebSocket

from actors.handover import actor_gone
from actors.spares import Sessions
from api.errors import unwrap
from api.observe import call_context
from chatdf.db import Database
from chatdf.errors import ChatdfError, Unauthorized
from chatdf.settings import Settings
from chatdf.store import owned_conversation, user_for_token

COOKIE_NAME = "session_token"
NOT_SIGNED_IN = "Not signed in or the session has expired"


@dataclass(frozen=True)
class AuthUser:
    id: str
    email: str
    token: str


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
DbDep = Annotated[Database, Depends(get_db)]
SessionsDep = Annotated[Sessions, Depends(get_sessions)]


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


def authenticate(db: Database, settings: Settings, token: str) -> AuthUser | None:
    if not token:
        return None
    with db.session() as s:
        user = user_for_token(s, token, settings.session_ttl_s)
        return AuthUser(user.id, user.email, token) if user else None


def current_user(request: Request, db: DbDep, settings: SettingsDep) -> AuthUser:
    """The signed-in user, from the httpOnly cookie or a Bearer header; 401 otherwise."""
    checked: AuthUser | None = getattr(request.state, "auth_user", None)
    if checked is not None:  # the app's middleware authenticated before routing
        return checked
    token, _source = token_from(request)
    user = authenticate(db, settings, token)
    if user is None:
        raise Unauthorized(NOT_SIGNED_IN)
    return user


CurrentUser = Annotated[AuthUser, Depends(current_user)]


def owned_conversation_id(conversation_id: str, user: CurrentUser, db: DbDep) -> str:
    """The path's conversation id, once it is known to be the user's (404 otherwise)."""
    with db.session() as s:
        owned_conversation(s, user.id, conversation_id)
    return conversation_id


OwnedConversationId = Annotated[str, Depends(owned_conversation_id)]


async def call_actor(sessions: Sessions, user_id: str, method: str, *args: Any) -> Any:
    """Calls a method on the user's session actor, binding a new one once if it just exited,
    or calling the current one if this edge's memory named an actor that has handed over."""
    for attempt in range(2):
        handle = await sessions.get(user_id)
        try:
            return await _remote_call(handle, method, args)
        except Exception as exc:
            if actor_gone(exc) or type(unwrap(exc)).__name__ == "Retired":
                sessions.forget(user_id)
                if attempt == 0:
                    continue
            raise
    raise AssertionError("unreachable")


async def _remote_call(handle: Any, method: str, args: tuple[Any, ...]) -> Any:
    """Awaits an actor method, re-raising our own errors as themselves (Ray wraps them).

    The call carries this request's context (ids, trace), bound in the actor for the call and
    the work it starts (actors/observe.py): its log lines and spans join this request's."""
    try:
        return await getattr(handle, method).remote(*args, call_context=call_context())
    except Exception as exc:
        inner = unwrap(exc)
        if inner is not exc and isinstance(inner, ChatdfError):
            raise inner from None
        raise


async def call_actor_if_running(sessions: Sessions, user_id: str, method: str, *args: Any) -> Any:
    """Like call_actor, but does nothing (returns None) when the user has no live actor."""
    handle = await sessions.find(user_id, fresh=True)
    if handle is None:
        return None
    try:
        return await _remote_call(handle, method, args)
    except Exception as exc:
        if actor_gone(exc):
            sessions.forget(user_id)
            return None  # it exited meanwhile: nothing of it to stop or cancel
        raise
