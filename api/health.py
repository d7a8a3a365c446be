"""Health and the bundled sample dataset: the two routes that need no session."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from api.deps import DbDep, SettingsDep
from api.errors import error_responses
from chatdf.errors import NotFound
from chatdf.schemas import Health
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
