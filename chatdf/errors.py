"""The one exception hierarchy of chatdf; the edge maps it to `{error, details}` bodies."""

from __future__ import annotations

DETAILS_MAX_CHARS = 2000  # the longest `details` text a task or engine error carries


class ChatdfError(Exception):
    """A failure a client should see as a sentence; `status` is the HTTP code it maps to."""

    status = 400

    def __init__(self, error: str, details: str | None = None) -> None:
        super().__init__(error, details)
        self.error = error
        self.details = details

    def body(self) -> dict[str, str | None]:
        return {"error": self.error, "details": self.details}

    def __str__(self) -> str:
        return self.error if not self.details else f"{self.error} ({self.details})"


class BadRequest(ChatdfError):
    status = 400


class Unauthorized(ChatdfError):
    status = 401


class Forbidden(ChatdfError):
    status = 403


class NotFound(ChatdfError):
    status = 404


class Conflict(ChatdfError):
    status = 409


class TooLarge(ChatdfError):
    status = 413


class OverBudget(ChatdfError):
    status = 429

    def __init__(self, error: str, details: str | None = None, resets_in_seconds: int = 0) -> None:
        super().__init__(error, details)
        self.resets_in_seconds = resets_in_seconds
        self.args = (error, details, resets_in_seconds)


class TooManyRequests(ChatdfError):
    status = 429


class UpstreamFailed(ChatdfError):
    """A dataset URL did not answer as it should."""

    status = 502


class Unavailable(ChatdfError):
    status = 503


class DatasetError(ChatdfError):
    """Loading or reading a dataset failed; `error` is the sentence shown to the user."""

    status = 400


class SqlRefused(ChatdfError):
    """The SQL sandbox refused a statement before any I/O happened."""

    status = 400


class SqlFailed(ChatdfError):
    """The SQL ran and failed (bad column, type error, time limit...)."""

    status = 400
