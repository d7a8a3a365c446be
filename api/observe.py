"""The edge's per-request observability: request id, log context, request metrics, the span.

One ASGI middleware, outermost, so every answer (a 401 or 413 from the inner middlewares too)
is counted, carries `X-Request-ID`, and logs with the ids. The ids it binds travel to the
session actor with each call (`call_context`).
"""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import EdgeMetrics, route_template
from chatdf import logs, tracing
from chatdf.settings import Settings

REQUEST_ID = "X-Request-ID"
CONVERSATION_PATH = re.compile(r"/conversations/([^/]+)")  # the routes' {conversation_id}


def call_context() -> dict[str, str]:
    """What a call to the session actor carries: the bound ids and, when this process traces,
    the current span."""
    context = logs.current()
    if tracing.in_use():
        context.update(tracing.inject())
    return context


class Observe:
    """Binds a request id (the client's `X-Request-ID` if sane, else a new one) and the path's
    conversation id, times the request by route template, and answers with the request id."""

    def __init__(self, app: ASGIApp, settings: Settings, metrics: EdgeMetrics | None) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # A socket lives for hours and starts the user's event follower: ids bound here
            # would stick to that follower's lines for every later socket.
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = logs.request_id_from(headers.get(logs.REQUEST_ID_HEADER))
        conversation = CONVERSATION_PATH.match(scope["path"])
        token = logs.bind(
            request_id=request_id, conversation_id=conversation[1] if conversation else None
        )
        try:
            await self._http(scope, receive, send, request_id, headers)
        finally:
            logs.reset(token)

    async def _http(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        headers: Headers,
    ) -> None:
        method = scope["method"]
        status = 500  # an exception before the answer started
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID] = request_id
            await send(message)

        carrier = {"traceparent": headers["traceparent"]} if "traceparent" in headers else None
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "chatdf.request_id": request_id,
        }
        with tracing.span(self.settings, method, attributes, carrier, kind="SERVER") as current:
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                route = route_template(scope)  # known once routed
                if current is not None:
                    current.update_name(f"{method} {route}")
                    current.set_attribute("http.route", route)
                    current.set_attribute("http.response.status_code", status)
                if self.metrics is not None:
                    elapsed = time.perf_counter() - started
                    self.metrics.observe_request(method, route, status, elapsed)
