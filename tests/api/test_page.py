"""The chat page's serving: public, strict Content-Security-Policy, no inline code, no HTML
built from data, contract error bodies; and its cookie-authenticated socket (same origin)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
import uuid
from html.parser import HTMLParser
from pathlib import Path

import httpx

from api.page import STATIC_DIR
from tests.live import LiveServer

STATIC_FILES = sorted(p.name for p in STATIC_DIR.iterdir())


def test_page_and_assets_are_public_with_a_strict_policy(live: LiveServer) -> None:
    """GET / and /static/* need no session; each carries the page's CSP (no inline script)."""
    with live.client() as anon:
        page = anon.get("/")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/static/app.js">' in page.text
        for name in STATIC_FILES:
            asset = anon.get(f"/static/{name}")
            assert asset.status_code == 200, (name, asset.text)
            assert asset.content == (STATIC_DIR / name).read_bytes()
            for response in (page, asset):
                policy = response.headers["content-security-policy"]
                assert "script-src 'self'" in policy and "default-src 'none'" in policy
                assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
                assert response.headers["x-content-type-options"] == "nosniff"
        js = anon.get("/static/app.js")
        assert js.headers["content-type"].split(";")[0] in (
            "text/javascript",
            "application/javascript",
        )
        # the REST routes still need a session
        assert anon.get("/conversations").status_code == 401


def test_missing_asset_is_a_contract_404(live: LiveServer) -> None:
    with live.client() as anon:
        r = anon.get("/static/nothing-here.js")
        assert r.status_code == 404
        assert set(r.json()) <= {"error", "details"} and r.json()["error"]
        traversal = anon.get("/static/..%2Fapp.py")
        assert traversal.status_code == 404


def test_page_routes_do_not_shadow_the_api(live: LiveServer) -> None:
    """The OpenAPI schema is unchanged by the page: `/` is not an API route."""
    with live.client() as anon:
        paths = anon.get("/openapi.json").json()["paths"]
    assert "/" not in paths and "/conversations" in paths


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.inline.append("inline <script>")
        if tag == "style" or "style" in names:
            self.inline.append(f"inline style on <{tag}>")
        self.inline += [f"{n} handler on <{tag}>" for n in names if n.startswith("on")]


def test_markup_has_no_inline_code_and_script_builds_no_html() -> None:
    """The CSP would block inline code anyway; and the script never parses strings as HTML,
    so model text, titles and dataset cells can only ever be text."""
    markup = _Markup()
    markup.feed((STATIC_DIR / "index.html").read_text())
    assert markup.inline == []
    script = (STATIC_DIR / "app.js").read_text()
    sinks = re.findall(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", script
    )
    assert sinks == []


def test_same_origin_cookie_socket_is_accepted_and_others_refused(live: LiveServer) -> None:
    """The page holds only the httpOnly cookie: its socket's Origin is the server's own."""
    token, user_id, client = live.login(f"page-{uuid.uuid4().hex[:8]}@example.com")
    client.close()
    cookie = {"Cookie": f"session_token={token}"}
    own = f"http://127.0.0.1:{live.port}"
    with live.ws(None, additional_headers=cookie, origin=own) as ws:
        live.call(live.manager.send_to_user(user_id, {"type": "ping"}))
        assert ws.receive_json()["type"] == "ping"
    for other in (
        f"http://127.0.0.1:{live.port + 1}",
        f"https://127.0.0.1:{live.port}",
        "http://evil.example",
        "null",
    ):
        with live.ws(None, additional_headers=cookie, origin=other) as ws:
            assert ws.close_code() == 4001, other


def test_public_url_origin_is_accepted(live: LiveServer) -> None:
    """Behind a load balancer the browser's Origin is PUBLIC_URL, whatever Host reaches us."""
    live.settings.public_url = "https://chat.example.com/"
    token, user_id, client = live.login(f"page-{uuid.uuid4().hex[:8]}@example.com")
    client.close()
    cookie = {"Cookie": f"session_token={token}"}
    with live.ws(None, additional_headers=cookie, origin="https://chat.example.com") as ws:
        live.call(live.manager.send_to_user(user_id, {"type": "ping"}))
        assert ws.receive_json()["type"] == "ping"


def test_unknown_top_level_path_is_still_404(live: LiveServer) -> None:
    r = httpx.get(f"{live.url}/index.html")
    assert r.status_code == 404


def test_static_files_are_package_data() -> None:
    """A non-editable install ships every file of the page (pyproject's package-data)."""
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["api"]
    for name in STATIC_FILES:
        assert any(fnmatch.fnmatch(f"static/{name}", p) for p in patterns), name
