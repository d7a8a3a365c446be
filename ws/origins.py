"""Which browser origins may open a cookie-authenticated socket: the configured ones and our own.

A page served by this edge (`GET /`) holds only the httpOnly session cookie, so its socket is
cookie-authenticated and must pass the Origin check. An Origin naming the very host and port
the browser connected to (or PUBLIC_URL) is the same origin: no other site can send it, which
is what the check is for (cross-site WebSocket hijacking).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.websockets import WebSocket

from chatdf.settings import Settings

SECURE = {"ws": False, "wss": True, "http": False, "https": True}


def origin_allowed(websocket: WebSocket, settings: Settings) -> bool:
    """True when the socket's Origin is an allowed origin or this server's own."""
    origin = websocket.headers.get("origin")
    if not origin:
        return False
    if origin in settings.allowed_origins:
        return True
    if settings.public_url and origin == _origin_of(settings.public_url):
        return True
    parts = urlsplit(origin)
    host = websocket.headers.get("host", "")
    same_scheme = SECURE.get(parts.scheme) == SECURE.get(websocket.url.scheme)
    return bool(host) and parts.netloc.lower() == host.lower() and same_scheme


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
