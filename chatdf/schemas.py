"""The REST answers of protocol.md as pydantic models: what each route sends, field for field.

The edge declares them as response models (so `/openapi.json` describes every answer and error
body), the WebSocket events reuse the message and dataset objects, and a Python client can
parse answers with them. They describe what the routes answered before they existed, byte for
byte: same keys in the same order, same types and nulls (tests/api/test_schemas.py checks the
producers against them). No FastAPI here: `chatdf/` is imported by actors and clients too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Strings on the wire, annotated for the documents only: validation stays plain `str`, so a
# value passes through unchanged (parsing it into a datetime would reformat it).
Id = Annotated[str, Field(json_schema_extra={"format": "uuid"})]
Timestamp = Annotated[
    str, Field(json_schema_extra={"format": "date-time"}, description="ISO 8601 UTC, 'Z' suffix")
]


class Out(BaseModel):
    """A body the server sends: every field is always present (nulls included), so the output
    schema lists them all as required."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class ErrorBody(Out):
    """Every error answer: a sentence for people and optional technical text."""

    error: str = Field(description="A human sentence saying what went wrong")
    details: str | None = Field(default=None, description="Optional technical text")


class Success(Out):
    success: Literal[True] = True


# Auth ----------------------------------------------------------------------------------------


class UserProfile(Out):
    user_id: Id
    email: str
    name: str
    avatar_url: str | None


class DevLogin(Out):
    token: str = Field(description="The session token (also set as the session_token cookie)")
    user: UserProfile


class GoogleLogin(Out):
    redirect_url: str = Field(description="Google's consent URL, carrying a CSRF state")


# Usage ---------------------------------------------------------------------------------------


class Usage(Out):
    """The token budget over a rolling 24-hour window."""

    tokens_used: int
    token_limit: int
    remaining: int
    usage_percent: float = Field(description="Percent of the limit spent; may pass 100")
    resets_in_seconds: int


# Conversations -------------------------------------------------------------------------------


class Column(Out):
    name: str
    type: str = Field(description="A friendly type name (integer, float, text, date, ...)")


class Message(Out):
    id: Id
    role: Literal["user", "assistant"]
    content: str
    sql_query: str | None = Field(description="The last SQL the answer ran, or null")
    token_count: int
    created_at: Timestamp


class Dataset(Out):
    """A dataset of a conversation, as `GET /conversations/{id}` lists it."""

    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    id: Id
    name: str = Field(description="Its SQL table name")
    url: str
    status: Literal["loading", "ready", "error"]
    row_count: int | None
    column_count: int | None
    # `schema` would shadow a BaseModel attribute; the wire name is the alias.
    schema_: list[Column] = Field(alias="schema")
    error: str | None = Field(description="Why loading failed (status 'error'), else null")
    format: str | None = Field(description="parquet, csv, tsv, ndjson or ipc once read")
    loaded_at: Timestamp | None = Field(description="When its content was last read from the URL")


class ConversationCreated(Out):
    id: Id
    title: str
    created_at: Timestamp


class ConversationSummary(Out):
    id: Id
    title: str
    created_at: Timestamp
    updated_at: Timestamp
    dataset_count: int


class ConversationList(Out):
    conversations: list[ConversationSummary] = Field(description="Newest updated_at first")


class ConversationDetail(Out):
    id: Id
    title: str
    created_at: Timestamp
    updated_at: Timestamp
    messages: list[Message]
    datasets: list[Dataset]


class ConversationRenamed(Out):
    id: Id
    title: str
    updated_at: Timestamp


class ConversationsDeleted(Out):
    success: Literal[True] = True
    deleted_count: int


# Datasets and chat ---------------------------------------------------------------------------


class DatasetAdded(Out):
    dataset_id: Id
    status: Literal["loading"] = "loading"


class MessageAccepted(Out):
    message_id: Id
    status: Literal["processing"] = "processing"


class QueryResult(Out):
    columns: list[str]
    rows: list[list[Any]] = Field(description="JSON values, row by row (docs/sql.md)")
    total_rows: int | None = Field(description="Exact when not truncated, else null")
    truncated: bool
    execution_ms: float


# Health --------------------------------------------------------------------------------------


class Health(Out):
    """Answered with 200 when Ray and the database answer, else 503 with the same body."""

    status: Literal["ok", "degraded"]
    ray: bool
    ray_nodes: int
    database: bool
    llm_configured: bool
    model_provider: Literal["gemini", "openai"] = Field(description="MODEL_PROVIDER")
    model: str | None = Field(description="The model chat uses (MODEL_NAME or GEMINI_MODEL)")
    warm_session_actors: int = Field(
        description="Started, unbound session actors this edge holds ready (WARM_SESSION_ACTORS)"
    )


class Live(Out):
    """GET /health/live: the process serves requests (no database or Ray call)."""

    status: Literal["alive"]


class Ready(Out):
    """GET /health/ready: 200 when the database answers and Ray is connected, else 503."""

    status: Literal["ready", "unready"]
    database: bool
    ray: bool
    checked_at: str = Field(description="When the (cached) check ran, ISO 8601")
