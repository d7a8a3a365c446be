"""Queries on the schema shared by the edge and the session actors, and their JSON shapes."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from chatdf.db import (
    Conversation,
    Dataset,
    Message,
    OAuthState,
    ReferralKey,
    User,
    UserSession,
    iso,
    utcnow,
)
from chatdf.errors import BadRequest, Forbidden, NotFound

DEV_USER_EMAIL = "dev@localhost"
MAX_TOKEN_CHARS = 200  # longer is no token of ours: refused before hashing


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# Users and sessions -------------------------------------------------------------------------


def user_json(user: User) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "email": user.email,
        "name": user.name,
        "avatar_url": user.avatar_url,
    }


def get_or_create_user(
    db: Session,
    email: str,
    name: str = "",
    avatar_url: str | None = None,
    signed_up_with: str | None = None,
    google_sub: str | None = None,
) -> tuple[User, bool]:
    """The user with this email, and whether it was just created."""
    user = db.scalar(select(User).where(User.email == email))
    if user is not None:
        return user, False
    user = User(
        email=email,
        name=name or email.split("@")[0],
        avatar_url=avatar_url,
        signed_up_with=signed_up_with,
        google_sub=google_sub,
    )
    db.add(user)
    db.flush()
    return user, True


def find_user(db: Session, email: str) -> User | None:
    return db.scalar(select(User).where(User.email == email))


def find_google_user(db: Session, sub: str, email: str) -> User | None:
    """The account of this Google identity: by its stable `sub`, else an account of the same
    email not yet linked to any Google identity (then linked). An email already linked to a
    different `sub` (Google reassigned it) is not taken over."""
    user = db.scalar(select(User).where(User.google_sub == sub))
    if user is not None:
        if user.email != email and find_user(db, email) is None:
            user.email = email  # the address changed at Google
        return user
    user = find_user(db, email)
    if user is None:
        return None
    if user.google_sub is not None:
        raise Forbidden("This email address belongs to another Google account here")
    user.google_sub = sub
    return user


def made_by_dev_login(user: User) -> bool:
    return user.signed_up_with == "dev" or (
        user.signed_up_with is None and user.email == DEV_USER_EMAIL
    )


def claim_for_google(db: Session, user: User) -> None:
    """Google proved this email: an account dev login made for it becomes a Google account,
    and every session opened before (by whoever used dev login with that email) ends."""
    if user.signed_up_with != "google":
        user.signed_up_with = "google"
        db.execute(delete(UserSession).where(UserSession.user_id == user.id))


def create_session(db: Session, user_id: str, ttl_s: int) -> str:
    """A new session for the user; returns the raw token (only its hash is stored)."""
    purge_expired_sessions(db)
    token = secrets.token_urlsafe(32)
    db.add(
        UserSession(
            user_id=user_id,
            token_hash=hash_secret(token),
            expires_at=utcnow() + timedelta(seconds=ttl_s),
        )
    )
    return token


def live_sessions(db: Session, tokens: Iterable[str]) -> dict[str, tuple[UserSession, User]]:
    """The live (unexpired) sessions of these raw tokens and their users, by token; one query
    for them all. Tokens that are empty, too long or unknown are absent."""
    by_hash = {hash_secret(t): t for t in tokens if t and len(t) <= MAX_TOKEN_CHARS}
    if not by_hash:
        return {}
    rows = db.execute(
        select(UserSession, User)
        .join(User, User.id == UserSession.user_id)
        .where(UserSession.token_hash.in_(list(by_hash)))
    ).all()
    now = utcnow()
    return {by_hash[row.token_hash]: (row, user) for row, user in rows if row.expires_at > now}


def sessions_due_extension(rows: Iterable[UserSession], ttl_s: int) -> list[str]:
    """The ids of the sessions whose sliding expiry should move: at most once a minute each,
    so that extending a session does not cost a write per request."""
    new_expiry = utcnow() + timedelta(seconds=ttl_s)
    return [row.id for row in rows if new_expiry - row.expires_at > timedelta(seconds=60)]


def extend_sessions(db: Session, session_ids: list[str], ttl_s: int) -> None:
    """Moves these sessions' expiry to `ttl_s` from now (one statement for them all)."""
    if session_ids:
        new_expiry = utcnow() + timedelta(seconds=ttl_s)
        db.execute(
            update(UserSession).where(UserSession.id.in_(session_ids)).values(expires_at=new_expiry)
        )


def delete_session(db: Session, token: str) -> None:
    db.execute(delete(UserSession).where(UserSession.token_hash == hash_secret(token)))


# Referral keys and OAuth state ----------------------------------------------------------------


def create_referral_key(db: Session) -> str:
    key = secrets.token_urlsafe(16)
    db.add(ReferralKey(key_hash=hash_secret(key)))
    return key


def redeem_referral_key(db: Session, key: str | None, user_id: str) -> None:
    """Marks a key used; raises if it is missing, unknown or already used (single use)."""
    if not key:
        raise Forbidden("A referral key is required to sign up")
    # One conditional UPDATE: of two sign-ups racing for a key, exactly one wins.
    result = db.execute(
        update(ReferralKey)
        .where(ReferralKey.key_hash == hash_secret(key), ReferralKey.used_by.is_(None))
        .values(used_by=user_id, used_at=utcnow())
    )
    if getattr(result, "rowcount", 0) != 1:
        raise Forbidden("This referral key is invalid or has already been used")


def referral_key_usable(db: Session, key: str | None) -> bool:
    if not key:
        return False
    row = db.get(ReferralKey, hash_secret(key))
    return row is not None and row.used_by is None


@dataclass(frozen=True)
class NewOAuthState:
    state: str  # goes to Google and back in the URL
    code_verifier: str  # PKCE: stays here, sent only with the code
    browser_secret: str  # goes to this browser only, as a short-lived cookie


def create_oauth_state(db: Session, referral_key: str | None, ttl_s: int) -> NewOAuthState:
    """A single-use CSRF state bound to one browser, with its PKCE verifier; old ones purged."""
    purge_expired_oauth_states(db, ttl_s)
    new = NewOAuthState(
        state=secrets.token_urlsafe(32),
        code_verifier=secrets.token_urlsafe(48),
        browser_secret=secrets.token_urlsafe(32),
    )
    db.add(
        OAuthState(
            state=new.state,
            referral_key=referral_key,
            code_verifier=new.code_verifier,
            browser_hash=hash_secret(new.browser_secret),
        )
    )
    return new


def pop_oauth_state(
    db: Session, state: str, browser_secret: str | None, ttl_s: int
) -> OAuthState | None:
    """Consumes a CSRF state: each works once, within its lifetime, in the browser that
    started it (the one holding its cookie)."""
    if not state or len(state) > 64:
        return None
    row = db.get(OAuthState, state)
    if row is None:
        return None
    db.delete(row)
    if row.created_at < utcnow() - timedelta(seconds=ttl_s):
        return None
    if row.browser_hash is None or not browser_secret:
        return None
    if not hmac.compare_digest(row.browser_hash, hash_secret(browser_secret)):
        return None
    return row


def purge_expired_oauth_states(db: Session, ttl_s: int) -> None:
    db.execute(
        delete(OAuthState).where(OAuthState.created_at < utcnow() - timedelta(seconds=ttl_s))
    )


def live_token_hashes(db: Session, hashes: set[str]) -> set[str]:
    """Which of these session token hashes still belong to an unexpired session."""
    rows = db.scalars(
        select(UserSession.token_hash).where(
            UserSession.token_hash.in_(hashes), UserSession.expires_at > utcnow()
        )
    )
    return set(rows)


def purge_expired_sessions(db: Session) -> None:
    db.execute(delete(UserSession).where(UserSession.expires_at < utcnow()))


# Conversations ----------------------------------------------------------------------------


def owned_conversation(db: Session, user_id: str, conversation_id: str) -> Conversation:
    """The conversation if it exists and is the user's; otherwise 404 (never reveal others')."""
    conv = db.get(Conversation, conversation_id) if _is_uuidish(conversation_id) else None
    if conv is None or conv.user_id != user_id:
        raise NotFound("Conversation not found")
    return conv


def conversation_owners(db: Session, conversation_ids: Iterable[str]) -> dict[str, str]:
    """The owners (user ids) of those of these conversations that exist, by conversation id.

    An id with a NUL character names no conversation (ids are UUIDs) and is never sent: in one
    `IN` list for many requests, PostgreSQL's refusal of it would fail them all."""
    wanted = [c for c in set(conversation_ids) if _is_uuidish(c) and "\x00" not in c]
    if not wanted:
        return {}
    rows = db.execute(
        select(Conversation.id, Conversation.user_id).where(Conversation.id.in_(wanted))
    )
    return {conv_id: user_id for conv_id, user_id in rows}


def _is_uuidish(value: str) -> bool:
    return 0 < len(value) <= 36


def touch(conv: Conversation, when: datetime | None = None) -> None:
    conv.updated_at = when or utcnow()


def conversation_summary(db: Session, conv: Conversation) -> dict[str, Any]:
    count = db.scalar(select(func.count()).where(Dataset.conversation_id == conv.id)) or 0
    return {
        "id": conv.id,
        "title": conv.title,
        "created_at": iso(conv.created_at),
        "updated_at": iso(conv.updated_at),
        "dataset_count": count,
    }


def list_conversations(db: Session, user_id: str) -> list[dict[str, Any]]:
    counts = (
        select(Dataset.conversation_id, func.count().label("n"))
        .group_by(Dataset.conversation_id)
        .subquery()
    )
    rows = db.execute(
        select(Conversation, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.conversation_id == Conversation.id)
        .where(Conversation.user_id == user_id)
        .order_by(Conversation.updated_at.desc(), Conversation.created_at.desc())
    ).all()
    return [
        {
            "id": c.id,
            "title": c.title,
            "created_at": iso(c.created_at),
            "updated_at": iso(c.updated_at),
            "dataset_count": n,
        }
        for c, n in rows
    ]


def conversation_detail(db: Session, conv: Conversation) -> dict[str, Any]:
    return {
        "id": conv.id,
        "title": conv.title,
        "created_at": iso(conv.created_at),
        "updated_at": iso(conv.updated_at),
        "messages": [message_json(m) for m in messages_of(db, conv.id)],
        "datasets": [dataset_json(d) for d in datasets_of(db, conv.id)],
    }


def validate_title(title: object) -> str:
    if not isinstance(title, str) or not 1 <= len(title.strip()) <= 100:
        raise BadRequest("Title must be between 1 and 100 characters")
    return title.strip()


# Messages ---------------------------------------------------------------------------------


def messages_of(db: Session, conversation_id: str) -> list[Message]:
    return list(
        db.scalars(
            select(Message)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.created_at, Message.id)
        )
    )


def message_json(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "role": m.role,
        "content": m.content,
        "sql_query": m.sql_query,
        "token_count": m.token_count,
        "created_at": iso(m.created_at),
    }


def history_json(m: Message) -> dict[str, Any]:
    """A message as the model's context sees it (with its tool rounds)."""
    return {
        "role": m.role,
        "content": m.content,
        "tool_rounds": json.loads(m.tool_rounds) if m.tool_rounds else [],
    }


# Datasets ---------------------------------------------------------------------------------


def datasets_of(db: Session, conversation_id: str) -> list[Dataset]:
    return list(
        db.scalars(
            select(Dataset)
            .where(Dataset.conversation_id == conversation_id)
            .order_by(Dataset.position, Dataset.created_at)
        )
    )


def dataset_json(d: Dataset) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": d.name,
        "url": d.url,
        "status": d.status,
        "row_count": d.row_count,
        "column_count": d.column_count,
        "schema": json.loads(d.schema_json) if d.schema_json else [],
        "error": d.error,
        "format": d.format,
        "loaded_at": iso(d.loaded_at),
    }


def table_json(dataset: dict[str, Any]) -> dict[str, Any]:
    """What a SQL task needs of a ready dataset (a `dataset_json`): where, what, which version."""
    loaded = dataset.get("loaded_at")
    return {
        "name": dataset["name"],
        "url": dataset["url"],
        "format": dataset["format"],
        "version": datetime.fromisoformat(loaded).timestamp() if loaded else None,
    }
