"""A request cut off by the server's shutdown answers 503 in the contract's error body, not 500."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

SHUTTING_DOWN = "The server is shutting down; try again in a moment"


class AnswerWhenCutOff:
    """At SIGTERM uvicorn waits SHUTDOWN_TIMEOUT_S for running requests, then cancels them and
    would answer 500 with a traceback in the log. A cancelled HTTP request (uvicorn cancels one
    only then) answers 503 instead, if it has not started its answer; it is not re-raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if started:
                raise
            response = error_response(503, SHUTTING_DOWN)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
