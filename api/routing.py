"""The route class of every REST router: JSON bodies must be text that can be stored.

JSON may spell a lone UTF-16 surrogate (`"\\ud800"`); Python decodes it into a `str` that no
UTF-8 database can store (SQLite raised UnicodeEncodeError: a 500 after the request had been
admitted). Such a body is refused before any route runs, with the contract's error body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

INVALID_TEXT = "The request contains text that is not valid Unicode (a lone surrogate)"


class BodyRefused(HTTPException):
    """A 400 whose `error` sentence is our own (api/errors.py renders it)."""

    def __init__(self, error: str, details: str | None = None) -> None:
        super().__init__(status_code=400, detail=details)
        self.error = error


class CheckedJSONRequest(Request):
    async def json(self) -> Any:
        data = await super().json()
        where = _lone_surrogate(data)
        if where is not None:
            raise BodyRefused(INVALID_TEXT, f"at {where}" if where else None)
        return data


class CheckedRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            return await handler(CheckedJSONRequest(request.scope, request.receive))

        return checked


def _lone_surrogate(value: Any, path: str = "") -> str | None:
    """The JSON path of the first string holding a lone surrogate, or None."""
    if isinstance(value, str):
        return path if any("\ud800" <= c <= "\udfff" for c in value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate(key, path) or _lone_surrogate(item, f"{path}.{key}".strip("."))
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None
