"""Health, the liveness and readiness probes, and the bundled sample dataset: the routes that
need no session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from api.deps import DbDep, SettingsDep
from api.errors import error_responses
from chatdf.db import Database, iso, utcnow
from chatdf.errors import NotFound
from chatdf.schemas import Health, Live, Ready
from chatdf.settings import SAMPLE_PATH, sample_file

router = APIRouter(tags=["health"])

PARQUET = "application/vnd.apache.parquet"


def ray_nodes() -> int:
    """Alive Ray nodes this edge sees (0 when Ray is unreachable)."""
    import ray

    try:
        if not ray.is_initialized():
            return 0
        nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
        return len([node for node in nodes if node.get("Alive")])
    except Exception:
        return 0


@router.get(
    "/health",
    response_model=Health,
    responses={
        503: {"model": Health, "description": "Degraded: Ray or the database does not answer"},
        **error_responses(),
    },
)
async def health(request: Request, db: DbDep, settings: SettingsDep) -> JSONResponse:
    """Whether Ray and the database answer, which model provider and model chat uses, and how
    many warm session actors this edge holds ready."""
    nodes = await asyncio.to_thread(ray_nodes)
    db_ok = await asyncio.to_thread(db.ping)
    ok = nodes > 0 and db_ok
    body: dict[str, Any] = {
        "status": "ok" if ok else "degraded",
        "ray": nodes > 0,
        "ray_nodes": nodes,
        "database": db_ok,
        "llm_configured": settings.llm_configured,
        "warm_session_actors": len(request.app.state.sessions.pool or ()),
        # Which model chat uses (MODEL_PROVIDER, and MODEL_NAME or GEMINI_MODEL); never a key
        # or a base URL (this route answers anyone).
        "model_provider": settings.model_provider,
        "model": settings.resolved_model_name or None,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


READY_CHECK_TIMEOUT_S = 2.0  # a database or Ray that takes longer counts as not answering


class Readiness:
    """The last readiness answer, checked again at most once per `ttl_s`: probes arriving
    together, or within the window, share one check (one database round trip, one Ray call)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.checks = 0
        self._lock = asyncio.Lock()
        self._checked_at: float | None = None
        self._answer: dict[str, Any] = {}

    async def answer(self, db: Database) -> dict[str, Any]:
        async with self._lock:
            now = self.clock()
            if self._checked_at is None or now - self._checked_at >= self.ttl_s:
                self._answer = await self._check(db)
                self._checked_at = now
            return self._answer

    async def _check(self, db: Database) -> dict[str, Any]:
        self.checks += 1
        db_ok, nodes = await asyncio.gather(
            _within_timeout(asyncio.to_thread(db.ping), False),
            _within_timeout(asyncio.to_thread(ray_nodes), 0),
        )
        ready = bool(db_ok) and nodes > 0
        return {
            "status": "ready" if ready else "unready",
            "database": bool(db_ok),
            "ray": nodes > 0,
            "checked_at": iso(utcnow()),
        }


async def _within_timeout(check: Any, failed: Any) -> Any:
    try:
        return await asyncio.wait_for(check, READY_CHECK_TIMEOUT_S)
    except TimeoutError:
        return failed


@router.get("/health/live", response_model=Live, responses=error_responses())
async def health_live() -> dict[str, str]:
    """Liveness probe: the process serves requests (no database or Ray call)."""
    return {"status": "alive"}


@router.get(
    "/health/ready",
    response_model=Ready,
    responses={
        503: {"model": Ready, "description": "Not ready: the database or Ray does not answer"},
        **error_responses(),
    },
)
async def health_ready(request: Request, db: DbDep, settings: SettingsDep) -> JSONResponse:
    """Readiness probe: the database answers and Ray is connected (checked at most once per
    HEALTH_READY_CACHE_S); 503 until both do."""
    readiness: Readiness | None = getattr(request.app.state, "readiness", None)
    if readiness is None:
        readiness = request.app.state.readiness = Readiness(settings.health_ready_cache_s)
    body = await readiness.answer(db)
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)


@router.get(
    SAMPLE_PATH,
    response_class=FileResponse,
    responses={
        200: {"content": {PARQUET: {}}, "description": "The Parquet file"},
        **error_responses(404),
    },
)
def sample_dataset(request: Request) -> FileResponse:
    """The bundled sample dataset (Parquet), so a new user can try chatdf with no data."""
    path = sample_file()
    if not path.is_file():
        raise NotFound("Sample dataset not found")
    return FileResponse(str(path), media_type=PARQUET)
