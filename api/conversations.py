"""Conversation routes: create, list, read, rename, delete one, delete all (owner only)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel
from sqlalchemy import select

from actors.session import SessionActor
from api.deps import ActorDep, CurrentUser, DbDep
from api.errors import error_responses
from api.routing import CheckedRoute
from chatdf.db import Conversation, iso
from chatdf.schemas import (
    ConversationCreated,
    ConversationDetail,
    ConversationList,
    ConversationRenamed,
    ConversationsDeleted,
    Success,
)
from chatdf.store import (
    conversation_detail,
    list_conversations,
    owned_conversation,
    touch,
    validate_title,
)

router = APIRouter(prefix="/conversations", tags=["conversations"], route_class=CheckedRoute)


class ConversationCreateBody(BaseModel):
    title: str | None = None


class ConversationRenameBody(BaseModel):
    title: Any = None


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ConversationCreated,
    responses=error_responses(400, 401, 413, 503),
)
def create_conversation(
    user: CurrentUser, db: DbDep, body: ConversationCreateBody | None = None
) -> dict[str, Any]:
    """Starts a new, empty conversation."""
    title = validate_title(body.title) if body and body.title is not None else "New conversation"
    with db.session() as s:
        conv = Conversation(user_id=user.id, title=title)
        s.add(conv)
        s.flush()
        return {"id": conv.id, "title": conv.title, "created_at": iso(conv.created_at)}


@router.get("", response_model=ConversationList, responses=error_responses(401, 503))
def get_conversations(user: CurrentUser, db: DbDep) -> dict[str, Any]:
    """The user's conversations, most recently updated first."""
    with db.session() as s:
        return {"conversations": list_conversations(s, user.id)}


@router.get(
    "/{conversation_id}",
    response_model=ConversationDetail,
    responses=error_responses(401, 404, 503),
)
def get_conversation(conversation_id: str, user: CurrentUser, db: DbDep) -> dict[str, Any]:
    """One conversation with its messages and datasets."""
    with db.session() as s:
        return conversation_detail(s, owned_conversation(s, user.id, conversation_id))


@router.patch(
    "/{conversation_id}",
    response_model=ConversationRenamed,
    responses=error_responses(400, 401, 404, 413, 503),
)
def rename_conversation(
    conversation_id: str, body: ConversationRenameBody, user: CurrentUser, db: DbDep
) -> dict[str, Any]:
    """Renames a conversation (1-100 characters)."""
    title = validate_title(body.title)
    with db.session() as s:
        conv = owned_conversation(s, user.id, conversation_id)
        conv.title = title
        touch(conv)
        return {"id": conv.id, "title": conv.title, "updated_at": iso(conv.updated_at)}


@router.delete(
    "/{conversation_id}", response_model=Success, responses=error_responses(401, 404, 503)
)
async def delete_conversation(
    conversation_id: str, user: CurrentUser, db: DbDep, actor: ActorDep
) -> dict[str, bool]:
    """Deletes a conversation with its messages and datasets (a running turn is stopped)."""

    def check() -> None:
        with db.session() as s:
            owned_conversation(s, user.id, conversation_id)

    def delete() -> None:
        with db.session() as s:
            conv = s.get(Conversation, conversation_id)
            if conv is not None:
                s.delete(conv)

    await asyncio.to_thread(check)  # database calls run off the event loop
    await actor.call_if_running(user.id, SessionActor.forget_conversation, conversation_id)
    await asyncio.to_thread(delete)
    return {"success": True}


@router.delete("", response_model=ConversationsDeleted, responses=error_responses(401, 503))
async def delete_all_conversations(user: CurrentUser, db: DbDep, actor: ActorDep) -> dict[str, Any]:
    """Deletes every conversation of the user."""

    def ids() -> list[str]:
        with db.session() as s:
            return list(s.scalars(select(Conversation.id).where(Conversation.user_id == user.id)))

    def delete() -> int:
        with db.session() as s:
            rows = s.scalars(select(Conversation).where(Conversation.user_id == user.id)).all()
            for conv in rows:
                s.delete(conv)
            return len(rows)

    for conversation_id in await asyncio.to_thread(ids):
        await actor.call_if_running(user.id, SessionActor.forget_conversation, conversation_id)
    return {"success": True, "deleted_count": await asyncio.to_thread(delete)}
