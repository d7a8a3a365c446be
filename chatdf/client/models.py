"""The client's typed REST results (pydantic models of the contract's answers) and `Answer`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chatdf.schemas import Column


class _Model(BaseModel):
    # Fields the server adds later must not break an older client.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class User(_Model):
    """`GET /auth/me`, and the `user` of a sign-in."""

    user_id: str
    email: str
    name: str | None = None
    avatar_url: str | None = None


class Conversation(_Model):
    """A conversation as `POST /conversations` and `GET /conversations` list it."""

    id: str
    title: str
    created_at: datetime | None = None  # not in a rename's answer
    updated_at: datetime | None = None
    dataset_count: int | None = None  # only in the list


class Message(_Model):
    id: str
    role: str
    content: str
    sql_query: str | None = None
    token_count: int = 0
    created_at: datetime


class Dataset(_Model):
    """A dataset as `GET /conversations/{id}` and `dataset_loaded` carry it."""

    id: str
    name: str
    url: str
    status: str  # "loading", "ready" or "error"
    row_count: int | None = None
    column_count: int | None = None
    schema_: list[Column] = Field(default_factory=list, alias="schema")
    error: str | None = None


class ConversationDetail(_Model):
    """`GET /conversations/{id}`: the conversation with its messages and datasets."""

    id: str
    title: str
    created_at: datetime
    updated_at: datetime
    messages: list[Message]
    datasets: list[Dataset]


class QueryResult(_Model):
    """`POST /conversations/{id}/query`: at most QUERY_MAX_ROWS rows, `truncated` past it."""

    columns: list[str]
    rows: list[list[Any]]
    total_rows: int
    truncated: bool
    execution_ms: float


class Usage(_Model):
    """`GET /usage`: the rolling 24-hour token budget."""

    tokens_used: int
    token_limit: int
    remaining: int
    usage_percent: float
    resets_in_seconds: int


class Answer(_Model):
    """What `ask()` returns once the turn ends: the saved message, its SQL, the SQL's rows
    (run again through `/query`, since no event carries them) and the budget after the turn."""

    conversation_id: str
    message: Message
    sql_query: str | None
    token_count: int
    result: QueryResult | None = None
    result_error: str | None = None  # why `result` is None although `sql_query` is set
    usage: Usage | None = None
    recovered: bool = False  # the socket dropped and the answer was re-read from the server

    @property
    def text(self) -> str:
        return self.message.content
