"""WebSocket fixtures: a signed-in user with an open socket on the live server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.live import LiveServer, WSHelper


@dataclass
class SignedIn:
    token: str
    user_id: str
    client: httpx.Client


@pytest.fixture
def user(live: LiveServer) -> Iterator[SignedIn]:
    token, user_id, client = live.login(f"ws-{uuid.uuid4().hex[:8]}@example.com")
    yield SignedIn(token, user_id, client)
    client.close()


@pytest.fixture
def ws_helper(live: LiveServer, user: SignedIn) -> Iterator[WSHelper]:
    """An authenticated, registered WebSocket (the seed plan's `ws_client` + `ws_helper`)."""
    with live.ws(user.token) as ws:
        yield ws


@pytest.fixture
def connection_manager(live: LiveServer) -> object:
    return live.manager
