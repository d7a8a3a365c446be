"""Browser fixtures: `chatdf serve` (fake model, fake data server) behind a cuttable relay, and
Debian's chromium driven by Playwright. CI (CHATDF_REQUIRE_BROWSER=1) fails without a browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.live import free_port, wait_until
from tests.web.relay import Relay

CHATDF = Path(sys.executable).parent / "chatdf"
CHROMIUM = os.environ.get("CHATDF_CHROMIUM", "/usr/bin/chromium")
# As root on a machine without outside network: no sandbox, no calls home (docs/page.md).
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = os.environ.get("CHATDF_SCREENSHOTS", "")  # a directory: keep the screenshots


@dataclass
class App:
    """`chatdf serve` as a user starts it; the browser reaches it only through `relay`."""

    direct_url: str
    relay: Relay
    gemini: FakeGemini
    data: FakeDataServer
    log: Path

    @property
    def url(self) -> str:
        return self.relay.url

    def rest(self, token: str) -> httpx.Client:
        """A REST client of the test's own, straight to the server (not through the relay)."""
        return httpx.Client(
            base_url=self.direct_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The server with its model pointed at the fake Gemini."""
    with serve_app(tmp_path_factory.mktemp("page"), with_model=True) as served:
        yield served


@pytest.fixture(scope="module")
def app_without_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The server as a newcomer first runs it: no model key."""
    with serve_app(tmp_path_factory.mktemp("page-no-model"), with_model=False) as served:
        yield served


@contextmanager
def serve_app(tmp: Path, *, with_model: bool) -> Iterator[App]:
    port = free_port()
    relay = Relay(port).start()
    gemini = FakeGemini().start()
    data = FakeDataServer().start()
    log = tmp / "serve.log"
    dropped = ("RAY_ADDRESS", "DATABASE_URL", "RAY_AUTH_", "GEMINI_", "PUBLIC_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(
        DATA_DIR=str(tmp / "data"),
        RAY_NUM_CPUS="2",
        RAY_NAMESPACE=f"chatdf-page-{uuid.uuid4().hex[:6]}",
        LLM_BACKOFF_S="0.01",
        PUBLIC_URL=relay.url,  # as behind a load balancer: the sample is offered under it
        DATASET_ALLOW_PRIVATE_HOSTS="true",  # the fake data server is on loopback
    )
    if with_model:
        env.update(GEMINI_API_KEY="fake-key", GEMINI_BASE_URL=gemini.base_url)
    direct = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(CHATDF), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
        )
    try:
        assert wait_until(lambda: _healthy(direct) or proc.poll() is not None, 120)
        assert proc.poll() is None, log.read_text()
        yield App(direct, relay, gemini, data, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        relay.stop()
        gemini.close()
        data.stop()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _no_browser(reason: str) -> None:
    if os.environ.get("CHATDF_REQUIRE_BROWSER") == "1":
        pytest.fail(f"a browser is required (CHATDF_REQUIRE_BROWSER=1): {reason}")
    pytest.skip(reason)


def require_playwright() -> Any:
    """Playwright's `expect`; without Playwright the module skips (fails under CI)."""
    try:
        from playwright.sync_api import expect
    except ImportError as exc:
        reason = f"playwright is not installed ({exc}); ./scripts/install.sh installs it"
        if os.environ.get("CHATDF_REQUIRE_BROWSER") == "1":
            raise
        pytest.skip(reason, allow_module_level=True)
    expect.set_options(timeout=30_000)  # a loaded 2-core machine; each wait is on a condition
    return expect


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, launched by Playwright (which never downloads one here)."""
    from playwright.sync_api import sync_playwright

    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        _no_browser(
            f"no chromium at {CHROMIUM} ({found or 'none on PATH'}): apt-get install chromium"
        )
    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, chromium_sandbox=False, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@dataclass
class Tab:
    """One browser context (its own cookies) with the page's errors and socket frames kept."""

    page: Any
    shots: Path
    errors: list[str]
    frames: list[str]
    sockets: list[Any]

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    @contextmanager
    def next_event(self, type_: str) -> Iterator[dict[str, Any]]:
        """The next event of `type_` on the page's socket, received while the block runs (or
        within the default timeout after it): a wait on the frame itself, not a poll."""
        socket = self.page.wait_for_event("websocket") if not self.sockets else self.sockets[-1]

        def wanted(payload: str | bytes) -> bool:
            return isinstance(payload, str) and json.loads(payload).get("type") == type_

        event: dict[str, Any] = {}
        with socket.expect_event("framereceived", predicate=wanted) as frame:
            yield event
        event.update(json.loads(frame.value))

    def session_token(self) -> str:
        cookies = self.page.context.cookies()
        return str(next(c["value"] for c in cookies if c["name"] == "session_token"))


@pytest.fixture
def tab(browser: Any, app: App, tmp_path: Path) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    frames: list[str] = []
    sockets: list[Any] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    page.on("websocket", lambda ws: sockets.append(ws))
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(payload)))
    shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield Tab(page, shots, errors, frames, sockets)
    finally:
        context.close()
    assert errors == [], errors  # no script error, no CSP violation on the way


def eventually(condition: Any, what: str, limit_s: float = 30.0) -> None:
    """Waits on a condition the test needs (not a sleep); fails naming what never happened."""
    end = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)
