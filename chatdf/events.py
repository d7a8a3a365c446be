"""Server-to-client WebSocket events: one pydantic model per `type`, the wire's single source."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from chatdf.schemas import Column, Dataset, Message

Phase = Literal["queued", "generating", "executing", "formatting"]


class _Event(BaseModel):
    # Every field is always on the wire (nulls included): the documents list them as required.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict that goes on the socket."""
        return self.model_dump(mode="json")


class Ping(_Event):
    """Heartbeat, every HEARTBEAT_INTERVAL seconds; the client answers `pong`."""

    type: Literal["ping"] = "ping"


class ChatToken(_Event):
    """A piece of the assistant's answer as it streams."""

    type: Literal["chat_token"] = "chat_token"
    conversation_id: str
    message_id: str
    token: str


class ChatComplete(_Event):
    """The turn ended and its answer is saved."""

    type: Literal["chat_complete"] = "chat_complete"
    conversation_id: str
    message_id: str
    token_count: int
    sql_query: str | None = Field(description="The last SQL the turn ran, or null")
    message: Message = Field(description="The saved assistant message")


class ChatError(_Event):
    """The turn failed, was refused or was interrupted; a partial answer is saved."""

    type: Literal["chat_error"] = "chat_error"
    conversation_id: str
    error: str
    details: str | None = None
    message_id: str | None = None


class DatasetLoading(_Event):
    """A dataset was admitted and is being read."""

    type: Literal["dataset_loading"] = "dataset_loading"
    conversation_id: str
    dataset_id: str
    url: str
    status: Literal["loading"] = "loading"


class DatasetLoaded(_Event):
    """A dataset is ready (after a load or a refresh)."""

    type: Literal["dataset_loaded"] = "dataset_loaded"
    conversation_id: str
    dataset_id: str
    name: str
    row_count: int
    column_count: int
    schema_: list[Column] = Field(alias="schema", serialization_alias="schema")
    dataset: Dataset = Field(description="The whole dataset object")

    model_config = ConfigDict(populate_by_name=True)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class DatasetError(_Event):
    """Loading a dataset failed (its row keeps the error)."""

    type: Literal["dataset_error"] = "dataset_error"
    conversation_id: str
    dataset_id: str
    error: str


class QueryStatus(_Event):
    """The phase a turn is in: queued, generating, executing (SQL), formatting."""

    type: Literal["query_status"] = "query_status"
    conversation_id: str
    phase: Phase


class RateLimitWarning(_Event):
    """After a turn that leaves usage at or above 80% of the budget."""

    type: Literal["rate_limit_warning"] = "rate_limit_warning"
    usage_percent: float
    remaining_tokens: int
    conversation_id: str | None = None


class RateLimitExceeded(_Event):
    """A message was refused because the budget is spent."""

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


# Client to server -------------------------------------------------------------------------


class Pong(BaseModel):
    """The client's answer to `ping`. Any frame proves the client alive; its content is ignored."""

    type: Literal["pong"] = "pong"
