"""The app factory: `create_app(settings)` with a lifespan that joins Ray and the database."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.session_client import SessionClient
from actors.spares import Sessions, SparePool
from actors.tasks import warm_task_workers
from api import (
    auth,
    chat,
    contracts,
    conversations,
    datasets,
    embedded_ray,
    health,
    metrics,
    usage,
)
from api.checks import OwnerChecker, SessionChecker
from api.deps import COOKIE_NAME, NOT_SIGNED_IN, token_from
from api.errors import DATABASE_UNAVAILABLE, error_response, install_error_handlers
from api.observe import REQUEST_ID, Observe, call_context
from api.page import STATIC_PREFIX, install_page
from api.shutdown import AnswerWhenCutOff
from chatdf import logs, tracing
from chatdf.db import Database, Dataset, utcnow
from chatdf.settings import SAMPLE_PATH, Settings
from ws.connections import ConnectionManager
from ws.endpoint import router as ws_router
from ws.sessions import watch_sessions

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
API_DESCRIPTION = (
    "Chat with your data. Errors answer `{error, details}`. The WebSocket `/ws` and its events "
    "are described by `/asyncapi.json` (AsyncAPI 3.0)."
)
PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/health/live",  # probes (api/health.py)
        "/health/ready",
        "/auth/google",
        "/auth/google/callback",
        "/auth/dev-login",
        SAMPLE_PATH,
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        contracts.ASYNCAPI_PATH,
        metrics.METRICS_PATH,  # counts only; METRICS_ENABLED=false removes it (observability.md)
        "/",  # the chat page (api/page.py); it signs in itself
    }
)
PUBLIC_PREFIXES = (STATIC_PREFIX + "/",)  # the page's script and stylesheet


def connect_ray(settings: Settings) -> bool:
    """Joins the cluster at RAY_ADDRESS, or starts an embedded Ray; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with _keeping_sigterm():
        _init_ray(settings)
    return True


@contextmanager
def _keeping_sigterm() -> Iterator[None]:
    """`ray.init` replaces the SIGTERM handler with one that exits the process at once; uvicorn's
    own handler (installed before the lifespan starts) shuts down gracefully: sockets closed with
    1001/1012, lifespan shutdown run, then the signal re-raised. Keep uvicorn's."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main else None
    try:
        yield
    finally:
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _init_ray(settings: Settings) -> None:
    import ray

    if settings.ray_address:
        if os.environ.get(embedded_ray.AUTH_MODE, "").strip().lower() != "token":
            log.warning(
                "RAY_AUTH_MODE is not 'token': joining the cluster without Ray token "
                "authentication (docs/security.md says how to set the token on every node)"
            )
        ray.init(
            address=settings.ray_address, namespace=settings.ray_namespace, log_to_driver=False
        )
    else:
        embedded_ray.start(
            fork_workers=settings.worker_fork_server,
            fork_preload=fork_preload(settings),
            num_cpus=settings.ray_num_cpus,
            resources=node_slots(settings),
            _system_config=node_system_config(settings),
            include_dashboard=False,
            namespace=settings.ray_namespace,
            log_to_driver=False,
            **metrics.embedded_ray_options(settings),
        )
        metrics.log_ray_metrics_port()


def fork_preload(settings: Settings, model_sdk: bool = True) -> str:
    """What the fork server imports for every worker: what a session actor imports, its
    database driver and (`model_sdk`) its model provider's SDK included; never Polars
    (actors/keep_out.py). A Ray shared by edges of different providers preloads no SDK: an
    actor imports only its own provider's (actors/llm.py)."""
    from actors.llm import PROVIDER_MODULES

    modules = ["actors.session"]
    if model_sdk:
        modules.append(PROVIDER_MODULES[settings.model_provider])
    if settings.resolved_database_url.startswith("postgresql"):
        modules += ["sqlalchemy.dialects.postgresql", "psycopg"]
    else:
        modules.append("sqlalchemy.dialects.sqlite")
    return " ".join(modules)


def node_slots(settings: Settings) -> dict[str, float]:
    """The embedded node's query, load and session slots (custom resources; docs/sql.md,
    docs/architecture.md "Session slots")."""
    from actors.capacity import SESSION_SLOT, session_slots
    from actors.tasks import LOAD_SLOT, QUERY_SLOT

    return {
        QUERY_SLOT: settings.query_slots_per_node,
        LOAD_SLOT: settings.dataset_load_slots_per_node,
        SESSION_SLOT: session_slots(settings.session_actors_per_node),
    }


def node_system_config(settings: Settings) -> dict[str, Any]:
    """Ray settings of the embedded node: keep idle task workers (with Polars and the query
    fork server loaded) instead of killing them when more processes than CPUs exist, which is
    always the case with session actors around (docs/sql.md, "Warm workers")."""
    return {"num_workers_soft_limit": settings.idle_workers_kept}


def close_stale_loads(db: Database, settings: Settings) -> None:
    """Rows still 'loading' long after any load could run end in error (e.g. after a crash)."""
    cutoff = utcnow() - timedelta(seconds=2 * settings.dataset_total_timeout_s + 60)
    with db.session() as s:
        s.execute(
            update(Dataset)
            .where(Dataset.status == "loading", Dataset.created_at < cutoff)
            .values(status="error", error="Loading was interrupted. Refresh to try again.")
        )


class BodyLimit:
    """Refuses bodies over `max_bytes`, announced by Content-Length or streamed in chunks."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        details = f"limit {self.max_bytes} bytes"
        length = Headers(scope=scope).get("content-length")
        if length and (not length.isdigit() or int(length) > self.max_bytes):
            await error_response(413, "Request body too large", details)(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from a body read, so our handler answers.
                    raise HTTPException(413, details)
            return message

        await self.app(scope, receive_within_limit, send)


class ContractCORS(CORSMiddleware):
    """CORS whose refused preflights answer the contract's `{error, details}`, not plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        body = bytes(response.body).decode()
        refused = error_response(
            response.status_code, "This cross-origin request is not allowed", body
        )
        for key, value in response.headers.items():
            if key.startswith("access-control-") or key == "vary":
                refused.headers[key] = value
        return refused


class AuthFirst:
    """Checks the session before routing, so no session is 401 even with a malformed body.

    The user found is left in the request state for the `CurrentUser` dependency; unknown paths
    stay 404 and CORS preflights pass.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._needs_session(scope):
            request = Request(scope)
            token, source = token_from(request)
            checker: SessionChecker = request.app.state.session_check
            try:
                user = await checker.check(token)
            except OperationalError:  # locked or down: say so in the error body, not a 500
                log.warning("database unavailable while checking a session")
                await error_response(503, DATABASE_UNAVAILABLE)(scope, receive, send)
                return
            if user is None:
                await error_response(401, NOT_SIGNED_IN)(scope, receive, send)
                return
            scope.setdefault("state", {})["auth_user"] = user
            logs.bind(user_id=user.id)  # this request's log lines (Observe resets the context)
            if source == "cookie":
                send = self._renewing_cookie(send, token)
        await self.app(scope, receive, send)

    def _renewing_cookie(self, send: Send, token: str) -> Send:
        """Sessions are extended on use; re-issuing the cookie keeps the browser's copy as long."""
        renewal = Response()
        auth.set_session_cookie(renewal, token, self.settings)
        cookie = next(value for key, value in renewal.raw_headers if key == b"set-cookie")
        own = COOKIE_NAME.encode() + b"="

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                # A route that sets the cookie itself (logout clears it) has the last word.
                if not any(k.lower() == b"set-cookie" and v.startswith(own) for k, v in headers):
                    message = {**message, "headers": [*headers, (b"set-cookie", cookie)]}
            await send(message)

        return send_with_cookie

    @staticmethod
    def _needs_session(scope: Scope) -> bool:
        if scope["method"] == "OPTIONS" or scope["path"] in PUBLIC_PATHS:
            return False
        if scope["path"].startswith(PUBLIC_PREFIXES):
            return False
        routes = scope["app"].router.routes
        return any(route.matches(scope)[0] != Match.NONE for route in routes)


async def _warm_task_workers(spares: SparePool, count: int) -> None:
    """Readies task workers once the warm session actors are up: a node starts only a few
    worker processes at a time, and a first user's call waits on a spare, not on these."""
    if not count:
        return
    await spares.wait_filled()
    try:
        await asyncio.gather(*await asyncio.to_thread(warm_task_workers, count))
    except Exception as exc:  # best effort: a cold worker is slower, not wrong
        log.warning("could not warm task workers (%s)", type(exc).__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # Database calls run on the loop's default executor (asyncio.to_thread): one thread per
    # pooled connection, not asyncio's min(32, CPUs + 4). Sign-in checks of a burst share one
    # query a batch (api/checks.py), so they take one of these threads at a time.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(
            max(8, settings.database_pool_size + settings.database_max_overflow),
            thread_name_prefix="db",
        )
    )
    db = Database(
        settings.resolved_database_url,
        busy_timeout_s=settings.database_busy_timeout_s,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    db.create_schema()
    close_stale_loads(db, settings)
    app.state.db = db
    app.state.session_check = SessionChecker(db, settings.session_ttl_s)
    app.state.owner_check = OwnerChecker(db)
    started_ray = connect_ray(settings)
    if settings.dev_login_enabled:
        log.warning(
            "dev login is ON: POST /auth/dev-login signs in dev-made accounts without a "
            "password%s (DEV_LOGIN=false turns it off)",
            " from any client" if settings.dev_login_allow_remote else " from this machine",
        )
    sessions = Sessions(settings)
    number = await sessions.register()  # this edge's start, before any actor of its deploy
    manager = ConnectionManager(settings)
    await manager.start(sessions.version, number)  # the hub's name ranks this deploy
    app.state.connection_manager = manager
    spares = SparePool(settings, manager.hub_name)
    sessions.pool = spares
    spares.start()
    warming = asyncio.create_task(_warm_task_workers(spares, settings.warm_task_workers))
    app.state.sessions = sessions
    app.state.actor = SessionClient(sessions, call_context)
    if app.state.metrics is not None:
        app.state.metrics.attach(manager)
        manager.following.on_batch = app.state.metrics.observe_delivery
    watch = asyncio.create_task(watch_sessions(manager, db, settings.session_check_interval_s))
    try:
        yield
    finally:
        watch.cancel()
        warming.cancel()
        await spares.close()
        await manager.close_all()
        await app.state.session_check.written()
        db.dispose()
        tracing.flush()
        if started_ray:
            embedded_ray.stop()


def create_app(settings: Settings) -> FastAPI:
    """Builds the edge: REST routers, /ws, error bodies, CORS and a body-size bound."""
    # JSONResponse, not FastAPI's default: with a response model the default serializes with
    # pydantic's own JSON writer, which prints floats differently (1e-05 as 0.00001): the
    # models describe the answers, they must not change a byte of them (docs/contracts.md).
    app = FastAPI(
        title="chatdf",
        version="0.1.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.state.settings = settings
    app.state.metrics = metrics.EdgeMetrics() if settings.metrics_enabled else None
    install_error_handlers(app)
    app.add_middleware(AuthFirst, settings=settings)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(AnswerWhenCutOff)
    # Added last, so outermost: the 401 and 413 answers above carry CORS headers too, and a
    # browser app sees "signed out" rather than a CORS error.
    app.add_middleware(
        ContractCORS,
        allow_origins=settings.allowed_origins,
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=[REQUEST_ID],
    )
    app.add_middleware(Observe, settings=settings, metrics=app.state.metrics)  # outermost

    for module in (health, auth, conversations, datasets, chat, usage, contracts):
        app.include_router(module.router)
    app.include_router(ws_router)
    if settings.metrics_enabled:
        app.include_router(metrics.router)
    install_page(app)
    return app
