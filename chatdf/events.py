"""Server-to-client WebSocket events: one pydantic model per `type`, the wire's single source."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

Phase = Literal["queued", "generating", "executing", "formatting"]


class _Event(BaseModel):
    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict that goes on the socket."""
        return self.model_dump(mode="json")


class ColumnSchema(BaseModel):
    name: str
    type: str


class Ping(_Event):
    type: Literal["ping"] = "ping"


class ChatToken(_Event):
    type: Literal["chat_token"] = "chat_token"
    conversation_id: str
    message_id: str
    token: str


class ChatComplete(_Event):
    type: Literal["chat_complete"] = "chat_complete"
    conversation_id: str
    message_id: str
    token_count: int
    sql_query: str | None
    message: dict[str, Any]


class ChatError(_Event):
    type: Literal["chat_error"] = "chat_error"
    conversation_id: str
    error: str
    details: str | None = None
    message_id: str | None = None


class DatasetLoading(_Event):
    type: Literal["dataset_loading"] = "dataset_loading"
    conversation_id: str
    dataset_id: str
    url: str
    status: Literal["loading"] = "loading"


class DatasetLoaded(_Event):
    type: Literal["dataset_loaded"] = "dataset_loaded"
    conversation_id: str
    dataset_id: str
    name: str
    row_count: int
    column_count: int
    schema_: list[ColumnSchema] = Field(alias="schema", serialization_alias="schema")
    dataset: dict[str, Any]

    model_config = {"populate_by_name": True}

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class DatasetError(_Event):
    type: Literal["dataset_error"] = "dataset_error"
    conversation_id: str
    dataset_id: str
    error: str


class QueryStatus(_Event):
    type: Literal["query_status"] = "query_status"
    conversation_id: str
    phase: Phase


class RateLimitWarning(_Event):
    type: Literal["rate_limit_warning"] = "rate_limit_warning"
    usage_percent: float
    remaining_tokens: int
    conversation_id: str | None = None


class RateLimitExceeded(_Event):
    type: Literal["rate_limit_exceeded"] = "rate_limit_exceeded"
    resets_in_seconds: int
    conversation_id: str | None = None


ServerEvent = Annotated[
    Ping
    | ChatToken
    | ChatComplete
    | ChatError
    | DatasetLoading
    | DatasetLoaded
    | DatasetError
    | QueryStatus
    | RateLimitWarning
    | RateLimitExceeded,
    Field(discriminator="type"),
]

server_event_adapter: TypeAdapter[ServerEvent] = TypeAdapter(ServerEvent)


def parse_event(data: dict[str, Any]) -> ServerEvent:
    """Validate a wire dict against the contract (tests use this to check every frame)."""
    return server_event_adapter.validate_python(data)
