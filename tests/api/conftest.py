"""REST fixtures: a signed-in client on the live edge."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.live import LiveServer


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    """A client whose requests carry a fresh user's session (Bearer)."""
    _token, _user_id, authed = live.login(f"api-{uuid.uuid4().hex[:8]}@example.com")
    with authed:
        yield authed
