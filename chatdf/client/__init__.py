"""chatdf's Python client for scripts and notebooks: `Client` (blocking) and `AsyncClient`.

Events are the server's own models from `chatdf.events`; REST answers are `chatdf.client.models`.
"""

from __future__ import annotations

from chatdf.client.async_client import DEFAULT_URL, AsyncClient
from chatdf.client.errors import (
    ApiError,
    ChatdfClientError,
    ConnectionFailed,
    DatasetFailed,
    NotSignedIn,
    ProtocolError,
    RateLimited,
    TimedOut,
    TurnFailed,
)
from chatdf.client.models import (
    Answer,
    Conversation,
    ConversationDetail,
    Dataset,
    Message,
    QueryResult,
    Usage,
    User,
)
from chatdf.client.sync_client import Client, Turn
from chatdf.client.turn import AsyncTurn

__all__ = [
    "DEFAULT_URL",
    "Answer",
    "ApiError",
    "AsyncClient",
    "AsyncTurn",
    "ChatdfClientError",
    "Client",
    "ConnectionFailed",
    "Conversation",
    "ConversationDetail",
    "Dataset",
    "DatasetFailed",
    "Message",
    "NotSignedIn",
    "ProtocolError",
    "QueryResult",
    "RateLimited",
    "TimedOut",
    "Turn",
    "TurnFailed",
    "Usage",
    "User",
]
