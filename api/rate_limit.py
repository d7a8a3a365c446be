"""Per-client-address rate limits on the sign-in routes (the `limits` library's moving window)."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from chatdf.errors import TooManyRequests
from chatdf.settings import Settings


class SignInLimiter:
    """`AUTH_RATE_LIMIT` (e.g. "30/minute") per client address, counted in this edge process.

    Behind a trusted proxy uvicorn puts the real client address in place of the proxy's. With
    several edges the limit holds per edge (a load balancer spreading one client over N
    edges gives it N times the rate); docs/security.md says so.
    """

    def __init__(self, rate: str) -> None:
        self.item = parse(rate)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def check(self, client: str) -> None:
        if not self.limiter.hit(self.item, "sign-in", client):
            raise TooManyRequests(
                "Too many sign-in attempts from this address; try again shortly",
                f"limit {self.item} per client address",
            )


def limit_sign_in(request: Request) -> None:
    state: Any = request.app.state
    limiter: SignInLimiter | None = getattr(state, "sign_in_limiter", None)
    if limiter is None:
        settings: Settings = state.settings
        limiter = state.sign_in_limiter = SignInLimiter(settings.auth_rate_limit)
    limiter.check(request.client.host if request.client else "unknown")


SignInRateLimit = Depends(limit_sign_in)
