"""The usage route: the user's rolling 24-hour token budget, answered by their actor."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from actors.session import SessionActor
from api.deps import ActorDep, CurrentUser
from api.errors import error_responses
from chatdf.schemas import Usage

router = APIRouter(tags=["usage"])


@router.get("/usage", response_model=Usage, responses=error_responses(401, 503))
async def get_usage(user: CurrentUser, actor: ActorDep) -> dict[str, Any]:
    """Tokens used, limit, remaining and time to reset over the rolling window."""
    return await actor.call(user.id, SessionActor.usage)
