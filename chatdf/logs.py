"""Log context (request, user, conversation, message ids) and the human or JSON log format.

The ids live in one context variable, so every log line written while a request or a turn runs
carries them: the edge binds them per request and passes them to the session actor with each
call (`actors/observe.py`), which binds them for the call and the turn task it starts. JSON lines
use python-json-logger (a maintained stdlib `logging` formatter, so uvicorn's and Ray's loggers
need no change); the human format is the one the service always had.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any

FIELDS = ("request_id", "user_id", "conversation_id", "message_id")
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

_NONE: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("chatdf_log_context", default=_NONE)


def current() -> dict[str, str]:
    """The ids bound in this context (a copy: what travels to the actor with a call)."""
    return dict(_context.get())


def bind(**fields: str | None) -> Token[Mapping[str, str]]:
    """Adds ids to this context (None or empty values are ignored); `reset` undoes it."""
    merged = dict(_context.get())
    merged.update({k: v for k, v in fields.items() if v and k in FIELDS})
    return _context.set(merged)


def reset(token: Token[Mapping[str, str]]) -> None:
    _context.reset(token)


@contextmanager
def bound(fields: Mapping[str, Any] | None) -> Iterator[None]:
    """The ids of `fields` bound for the duration of a block (a call that came from the edge)."""
    token = bind(**{k: str(v) for k, v in (fields or {}).items() if k in FIELDS and v})
    try:
        yield
    finally:
        reset(token)


def request_id_from(incoming: str | None) -> str:
    """The client's X-Request-ID when it is a short plain token; otherwise a new one."""
    if incoming and _SANE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (as attributes the formatters can use)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object a line: time, level, logger, message, the bound ids, any exception."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )


def formatter(log_format: str) -> logging.Formatter:
    return json_formatter() if log_format == "json" else logging.Formatter(HUMAN_FORMAT)


def configure(log_format: str, level: str, stream: Any = None) -> logging.Handler:
    """Sets the root logger's one handler (stderr) to the format, with the ids filter on it.

    Replaces a handler this function installed before (the same process may configure twice:
    the edge, then uvicorn's start-up); other handlers are left alone.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_chatdf", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._chatdf = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter(log_format))
    handler.addFilter(RedactTokens())  # on the handler: records propagated from any logger
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


_process_configured = False


def configure_worker(log_format: str, level: str) -> None:
    """In a Ray actor or task process, once: JSON lines (with the ids) to the worker's stderr
    file (Ray's `worker-*.err`) when LOG_FORMAT=json. The human format leaves Ray's own set-up
    untouched, as it always was."""
    global _process_configured
    if _process_configured or log_format != "json":
        return
    _process_configured = True
    configure(log_format, level)


TOKEN_IN_TEXT = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Keeps session tokens out of every log line (uvicorn logs the query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg = TOKEN_IN_TEXT.sub(r"\1[redacted]", message)
            record.args = None
        return True
