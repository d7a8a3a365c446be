"""Chat routes: post a message (the answer streams over /ws), stop a turn, run SQL directly."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel

from actors.session import SessionActor
from api.deps import (
    ActorDep,
    CurrentUser,
    OwnedConversationId,
)
from api.errors import error_responses
from api.routing import CheckedRoute
from chatdf.schemas import MessageAccepted, QueryResult, Success

router = APIRouter(
    prefix="/conversations/{conversation_id}", tags=["chat"], route_class=CheckedRoute
)


class MessageBody(BaseModel):
    content: Any = None


class QueryBody(BaseModel):
    sql: Any = None


@router.post(
    "/messages",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=MessageAccepted,
    responses=error_responses(400, 401, 404, 409, 413, 429, 503),
)
async def post_message(
    conversation_id: OwnedConversationId,
    body: MessageBody,
    user: CurrentUser,
    actor: ActorDep,
) -> dict[str, Any]:
    """Saves the user's message and starts the model's turn; events follow on the socket."""
    return await actor.call(user.id, SessionActor.post_message, conversation_id, body.content)


@router.post("/stop", response_model=Success, responses=error_responses(401, 404, 503))
async def stop_turn(
    conversation_id: OwnedConversationId, user: CurrentUser, actor: ActorDep
) -> dict[str, bool]:
    """Stops the running turn, keeping its partial answer (a no-op when none runs)."""
    await actor.call_if_running(user.id, SessionActor.stop, conversation_id)
    return {"success": True}


@router.post(
    "/query", response_model=QueryResult, responses=error_responses(400, 401, 404, 413, 503)
)
async def run_query(
    conversation_id: OwnedConversationId, body: QueryBody, user: CurrentUser, actor: ActorDep
) -> dict[str, Any]:
    """Runs SQL on the conversation's datasets under the model's sandbox and limits."""
    return await actor.call(user.id, SessionActor.query, conversation_id, body.sql)
