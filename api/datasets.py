"""Dataset routes: attach by URL, rename, refresh, delete (the loading runs in Ray tasks)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from actors.session import SessionActor
from api.deps import (
    ActorDep,
    CurrentUser,
    DbDep,
    OwnedConversationId,
)
from api.errors import error_responses
from api.routing import CheckedRoute
from chatdf.db import Dataset
from chatdf.errors import BadRequest, NotFound
from chatdf.schemas import Dataset as DatasetOut
from chatdf.schemas import DatasetAdded, Success
from chatdf.sql_names import is_reserved_word
from chatdf.store import dataset_json, datasets_of, owned_conversation, touch

router = APIRouter(
    prefix="/conversations/{conversation_id}/datasets", tags=["datasets"], route_class=CheckedRoute
)

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,49}$")
FILE_FUNCTION_NAME = re.compile(r"^(read|scan)_", re.IGNORECASE)  # the SQL guard refuses them


class DatasetAddBody(BaseModel):
    # Any: a missing or non-string URL gets the contract's "Invalid URL format", from the actor.
    url: Any = None


class DatasetRenameBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    table_name: Any = Field(default=None, alias="tableName")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetAdded,
    responses=error_responses(400, 401, 404, 413, 429, 503),
)
async def add_dataset(
    conversation_id: OwnedConversationId,
    body: DatasetAddBody,
    user: CurrentUser,
    actor: ActorDep,
) -> dict[str, Any]:
    """Attaches a dataset by URL; answers at once, progress arrives as events."""
    return await actor.call(user.id, SessionActor.add_dataset, conversation_id, body.url)


def find_dataset(s: Any, user_id: str, conversation_id: str, dataset_id: str) -> Dataset:
    owned_conversation(s, user_id, conversation_id)
    row = s.get(Dataset, dataset_id) if len(dataset_id) <= 36 else None
    if row is None or row.conversation_id != conversation_id:
        raise NotFound("Dataset not found")
    return row  # type: ignore[no-any-return]


@router.patch(
    "/{dataset_id}",
    response_model=DatasetOut,
    responses=error_responses(400, 401, 404, 413, 503),
)
def rename_dataset(
    conversation_id: str, dataset_id: str, body: DatasetRenameBody, user: CurrentUser, db: DbDep
) -> dict[str, Any]:
    """Renames the dataset's SQL table (identifier, 1-50 chars, unique, not a keyword)."""
    name = validate_table_name(body.table_name)
    with db.session() as s:
        row = find_dataset(s, user.id, conversation_id, dataset_id)
        others = {d.name.lower() for d in datasets_of(s, conversation_id) if d.id != row.id}
        taken = BadRequest(f"A table named '{name}' already exists in this conversation")
        if name.lower() in others:
            raise taken
        row.name = name
        conv = owned_conversation(s, user.id, conversation_id)
        touch(conv)
        try:
            s.flush()  # an admission that took the name meanwhile: the unique index says so
        except IntegrityError:
            raise BadRequest(
                f"A table named '{name}' already exists in this conversation"
            ) from None
        return dataset_json(row)


def validate_table_name(name: object) -> str:
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise BadRequest(
            "Table name must be 1-50 characters: letters, digits and underscores, "
            "not starting with a digit"
        )
    if FILE_FUNCTION_NAME.match(name):
        raise BadRequest(f"'{name}' is reserved for SQL table functions (read_*, scan_*)")
    if is_reserved_word(name):
        raise BadRequest(f"'{name}' is a SQL keyword and cannot be used as a table name")
    return name


@router.post(
    "/{dataset_id}/refresh",
    response_model=DatasetOut,
    responses=error_responses(400, 401, 404, 429, 502, 503),
)
async def refresh_dataset(
    conversation_id: str, dataset_id: str, user: CurrentUser, db: DbDep, actor: ActorDep
) -> dict[str, Any]:
    """Re-reads the dataset's schema from its URL (502 when the URL no longer answers)."""

    def check() -> None:
        with db.session() as s:
            find_dataset(s, user.id, conversation_id, dataset_id)

    await asyncio.to_thread(check)  # never a database call on the event loop
    return await actor.call(user.id, SessionActor.refresh_dataset, conversation_id, dataset_id)


@router.delete("/{dataset_id}", response_model=Success, responses=error_responses(401, 404, 503))
async def delete_dataset(
    conversation_id: str, dataset_id: str, user: CurrentUser, db: DbDep, actor: ActorDep
) -> dict[str, bool]:
    """Removes the dataset from the conversation (a load still running is cancelled)."""

    def check() -> None:
        with db.session() as s:
            find_dataset(s, user.id, conversation_id, dataset_id)

    def delete() -> None:
        with db.session() as s:
            row = find_dataset(s, user.id, conversation_id, dataset_id)
            s.delete(row)
            touch(owned_conversation(s, user.id, conversation_id))

    await asyncio.to_thread(check)
    await actor.call_if_running(user.id, SessionActor.forget_dataset, dataset_id)
    await asyncio.to_thread(delete)
    return {"success": True}
