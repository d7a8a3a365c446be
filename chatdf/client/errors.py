"""The client's exceptions: each carries the contract's `error` sentence and `details` text."""

from __future__ import annotations

import httpx


class ChatdfClientError(Exception):
    """Base of every error the client raises; `error` is the server's (or our) sentence."""

    def __init__(self, error: str, details: str | None = None) -> None:
        super().__init__(error, details)
        self.error = error
        self.details = details

    def __str__(self) -> str:
        return self.error if not self.details else f"{self.error} ({self.details})"


class ApiError(ChatdfClientError):
    """A REST call answered with an error body `{error, details}`; `status` is the HTTP code."""

    def __init__(self, status: int, error: str, details: str | None = None) -> None:
        super().__init__(error, details)
        self.status = status
        self.args = (status, error, details)


class NotSignedIn(ApiError):
    """401 from a route, or the socket closed with 4001: no, unknown or expired token."""


class RateLimited(ApiError):
    """429: the token budget is spent, or too many turns or loads run at once."""


class ConnectionFailed(ChatdfClientError):
    """The server could not be reached (or the socket could not be re-opened in time)."""


class TimedOut(ChatdfClientError):
    """A turn or a dataset load did not end within the time the caller allowed."""


class TurnFailed(ChatdfClientError):
    """The turn ended with a `chat_error` event; its partial answer, if any, is saved."""

    def __init__(
        self,
        error: str,
        details: str | None = None,
        conversation_id: str | None = None,
        message_id: str | None = None,
    ) -> None:
        super().__init__(error, details)
        self.conversation_id = conversation_id
        self.message_id = message_id


class DatasetFailed(ChatdfClientError):
    """A dataset could not be loaded: its `dataset_error` sentence (the dataset stays listed)."""

    def __init__(self, error: str, details: str | None = None, dataset_id: str = "") -> None:
        super().__init__(error, details)
        self.dataset_id = dataset_id


class ProtocolError(ChatdfClientError):
    """The server sent something the contract does not allow (a client or server bug)."""


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for an error answer, from its `{error, details}` body when it has one."""
    status = response.status_code
    error, details = f"HTTP {status}", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error = body["error"]
        raw = body.get("details")
        details = raw if isinstance(raw, str) or raw is None else str(raw)
    elif response.text:
        details = response.text[:500]  # not chatdf answering (a proxy?): show what it said
    if status == 401:
        return NotSignedIn(status, error, details)
    if status == 429:
        return RateLimited(status, error, details)
    return ApiError(status, error, details)
