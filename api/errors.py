"""Maps every failure to the contract's `{error, details}` body, in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.session_client import unwrap
from chatdf.errors import ChatdfError
from chatdf.schemas import ErrorBody

log = logging.getLogger(__name__)

SESSION_RESTARTING = "The session is restarting; try again in a moment"
DATABASE_UNAVAILABLE = "The database is busy or unavailable; try again in a moment"

_STATUS_SENTENCES = {
    400: "Bad request",
    401: "Not signed in",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    429: "Too many requests",
    503: "Service unavailable",
}


UNSTORABLE = "The request contains a value that cannot be stored (for example a NUL character)"


# What each error status means in the OpenAPI document (the body is always `{error, details}`).
_STATUS_MEANINGS = {
    400: "Bad input (validation errors too): nothing was changed",
    401: "No session, or an invalid or expired one",
    403: "Forbidden",
    404: "Not found, or not yours",
    409: "Conflict with the current state",
    413: "Request body too large",
    429: "Over a limit: the token budget, sign-in attempts or concurrent loads",
    502: "An upstream (a dataset URL, Google) failed",
    503: "Busy or unavailable (database, session restarting, no model configured); try again",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` of a route: these statuses, and `default` for any other failure,
    each with the error body. Declaring `default` also keeps FastAPI from documenting a 422
    with its own `{"detail": ...}` body, which this app never sends (validation is a 400)."""
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody, "description": _STATUS_MEANINGS[status]}
        for status in sorted(statuses)
    }
    responses["default"] = {"model": ErrorBody, "description": "Any other failure"}
    return responses


def error_response(status: int, error: str, details: str | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "details": details}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ChatdfError)
    async def chatdf_error(_req: Request, exc: ChatdfError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.details)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_req: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return error_response(400, "Invalid request body", "; ".join(parts) or None)

    @app.exception_handler(DataError)
    async def unstorable_value(_req: Request, exc: DataError) -> JSONResponse:
        # The database refused a value from the request, e.g. PostgreSQL and a NUL character
        # (in a title, a message or a path id): bad input, so 400, not 500. Ray re-raises an
        # actor's DataError as a subclass of it, so this catches those too.
        inner = unwrap(exc)
        details = str(getattr(inner, "orig", None) or inner).splitlines()[0][:200]
        return error_response(400, UNSTORABLE, details)

    @app.exception_handler(OperationalError)
    async def database_unavailable(_req: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", str(exc).splitlines()[0][:200])
        return error_response(503, DATABASE_UNAVAILABLE)

    @app.exception_handler(RayActorError)
    async def actor_gone(_req: Request, exc: RayActorError) -> JSONResponse:
        # The user's session actor died under the call, twice (call_actor re-creates it once):
        # a node lost, or the actor killed. Expected in a cluster, so a 503 and one log line
        # (the catch-all below would also make the server log a traceback).
        log.warning("session actor unavailable: %s", str(exc).splitlines()[0])
        return error_response(503, SESSION_RESTARTING)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else None
        own = getattr(exc, "error", None)  # api.routing.BodyRefused
        sentence = own or _STATUS_SENTENCES.get(exc.status_code, "Request failed")
        status = 400 if exc.status_code == 422 else exc.status_code
        return error_response(status, sentence, detail if detail != sentence else None)

    @app.exception_handler(Exception)
    async def unexpected(_req: Request, exc: Exception) -> JSONResponse:
        inner = unwrap(exc)
        if isinstance(inner, ChatdfError):
            return error_response(inner.status, inner.error, inner.details)
        if isinstance(inner, RayActorError):
            return error_response(503, SESSION_RESTARTING)
        if isinstance(inner, OperationalError):
            return error_response(503, DATABASE_UNAVAILABLE)
        log.exception("unexpected error")
        return error_response(500, "Internal server error")
