"""A real uvicorn server on a loopback port in a thread, and small REST/WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from actors.directory import find_session_actor
from api.app import create_app
from chatdf.events import parse_event
from chatdf.settings import Settings
from ws.protocol import uvicorn_ws_options


def session_alive(user_id: str, settings: Settings) -> bool:
    """Whether a session actor is bound to the user and running."""
    try:
        find_session_actor(user_id, settings.ray_namespace)
        return True
    except ValueError:
        return False


def wait_until(condition: Callable[[], bool], limit_s: float = 60.0) -> bool:
    """Polls a condition that must become true; the limit only bounds a failing test."""
    end = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """The whole edge (REST + /ws) served by uvicorn, as a user would meet it."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.settings = settings.model_copy(update={"host": "127.0.0.1", "port": self.port})
        self.app = create_app(self.settings)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            **uvicorn_ws_options(self.settings),
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        """Runs a coroutine on the server's event loop (e.g. on the connection manager)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def manager(self) -> Any:
        return self.app.state.connection_manager

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def login(self, email: str) -> tuple[str, str, httpx.Client]:
        """Dev-logs a user in; returns (token, user_id, authenticated client)."""
        with self.client() as anon:
            r = anon.post("/auth/dev-login", json={"email": email})
            r.raise_for_status()
        body = r.json()
        return body["token"], body["user"]["user_id"], self.client(body["token"])

    def ws(self, token: str | None, **kwargs: Any) -> WSHelper:
        url = self.ws_url + (f"?token={token}" if token is not None else "")
        return WSHelper(connect(url, open_timeout=30, **kwargs))


class WSHelper:
    """Reads and checks frames from a real WebSocket (the seed plan's `ws_helper`)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    def __enter__(self) -> WSHelper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ws.close()

    def receive_json(self, timeout: float = 10.0) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ws.recv(timeout=timeout))
        self.received.append(data)
        return data

    def receive_event(self, timeout: float = 10.0, skip_ping: bool = True) -> dict[str, Any]:
        """The next frame, checked against the contract's event models (pings skipped)."""
        while True:
            data = self.receive_json(timeout)
            if skip_ping and data.get("type") == "ping":
                continue
            if data.get("type") != "unknown_type":
                parse_event(data)
            return data

    def receive_until(self, type_: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Frames up to and including the first of `type_`."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {type_} event; got {[g['type'] for g in got]}")
            got.append(self.receive_event(left))
            if got[-1]["type"] == type_:
                return got

    def assert_received_type(self, expected_type: str) -> dict[str, Any]:
        msg = self.receive_event()
        assert msg["type"] == expected_type, msg
        return msg

    def assert_no_message(self, timeout: float = 0.5) -> None:
        try:
            frame = self.ws.recv(timeout=timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame!r}")

    def close_code(self, timeout: float = 10.0) -> int | None:
        """Waits for the server to close the socket and returns its close code."""
        try:
            while True:
                self.ws.recv(timeout=timeout)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
