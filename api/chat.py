"""Chat routes: post a message (the answer streams over /ws), stop a turn, run SQL directly."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel

from api.deps import (
    CurrentUser,
    OwnedConversationId,
    SessionsDep,
    call_actor,
    call_actor_if_running,
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
    sessions: SessionsDep,
) -> dict[str, Any]:
    """Saves the user's message and starts the model's turn; events follow on the socket."""
    result: dict[str, Any] = await call_actor(
        sessions, user.id, "post_message", conversation_id, body.content
    )
    return result


@router.post("/stop", response_model=Success, responses=error_responses(401, 404, 503))
async def stop_turn(
    conversation_id: OwnedConversationId, user: CurrentUser, sessions: SessionsDep
) -> dict[str, bool]:
    """Stops the running turn, keeping its partial answer (a no-op when none runs)."""
    await call_actor_if_running(sessions, user.id, "stop", conversation_id)
    return {"success": True}


@router.post(
    "/query", response_model=QueryResult, responses=error_responses(400, 401, 404, 413, 503)
)
async def run_query(
    conversation_id: OwnedConversationId, body: QueryBody, user: CurrentUser, sessions: SessionsDep
) -> dict[str, Any]:
    """Runs SQL on the conversation's datasets under the model's sandbox and limits."""
    result: dict[str, Any] = await call_actor(sessions, user.id, "query", conversation_id, body.sql)
    return result
