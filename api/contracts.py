"""`/asyncapi.json`: the WebSocket contract's document, served like FastAPI's `/openapi.json`."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter
from fastapi.responses import Response

from chatdf.asyncapi import render

ASYNCAPI_PATH = "/asyncapi.json"

router = APIRouter()


@cache
def asyncapi_bytes() -> bytes:
    """The document never changes while the process runs: rendered once."""
    return render().encode()


@router.get(ASYNCAPI_PATH, include_in_schema=False)
def get_asyncapi() -> Response:
    """The AsyncAPI 3.0 document of `/ws` (docs/contracts.md), unauthenticated."""
    return Response(asyncapi_bytes(), media_type="application/json")
