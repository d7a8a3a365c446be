"""The browser chat page: `GET /` and its static files, served with a strict security policy."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/static"

# The page is one HTML file, one JS module and one stylesheet from this server. No inline script
# or style, no other origin: model text or a dataset cell that slipped into markup could not
# run. 'self' in connect-src covers the same-origin ws:// and wss:// socket (CSP Level 3).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",  # revalidate (ETag) so an upgrade reaches open browsers
}

router = APIRouter(tags=["page"])


class PageFiles(StaticFiles):
    """StaticFiles whose answers carry the page's headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


@router.get("/", include_in_schema=False)
def chat_page() -> FileResponse:
    """The chat page (sign in, conversations, datasets, streamed answers)."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


def install_page(app: FastAPI) -> None:
    """Adds `GET /` and `/static/*` (both public: AuthFirst lets them through)."""
    app.include_router(router)
    app.mount(STATIC_PREFIX, PageFiles(directory=STATIC_DIR), name="static")
