"""Log lines carry the request, user, conversation and message ids, in the edge and in the
session actor; LOG_FORMAT=json writes one JSON object a line; tokens are never logged."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from websockets.sync.client import connect

from actors.session_ray import get_session_actor
from chatdf import logs
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer, free_port, wait_until
from tests.observe.scenario import run_turn
from tests.serving import chatdf_serve

CHATDF = Path(sys.executable).parent / "chatdf"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger configured by `logs.configure` into a buffer, put back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    logs.configure("json", "INFO", stream=out)
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_json_lines_carry_the_bound_ids_and_redact_tokens(captured: io.StringIO) -> None:
    log = logging.getLogger("chatdf.test")
    with logs.bound({"request_id": "r1", "user_id": "u1", "ignored": "x"}):
        token = logs.bind(conversation_id="c1", message_id="m1")
        log.info("GET /ws?token=%s 101", "s3cr3t-session")
        logs.reset(token)
        log.warning("after the turn")
    log.info("outside")
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert lines[0]["message"] == "GET /ws?token=[redacted] 101"
    assert "s3cr3t" not in captured.getvalue()
    ids = {k: lines[0][k] for k in logs.FIELDS}
    assert ids == {"request_id": "r1", "user_id": "u1", "conversation_id": "c1", "message_id": "m1"}
    assert (lines[0]["level"], lines[0]["logger"]) == ("INFO", "chatdf.test")
    assert "time" in lines[0] and "ignored" not in lines[0]
    assert {k: lines[1].get(k) for k in ("request_id", "message_id")} == {
        "request_id": "r1",
        "message_id": None,
    }
    assert not set(logs.FIELDS) & set(lines[2])


def test_request_ids_are_checked() -> None:
    assert logs.request_id_from("abc-DEF_1.2:3") == "abc-DEF_1.2:3"
    for odd in (None, "", "a b", "x" * 129, "naïve", "a\nb"):
        assert len(logs.request_id_from(odd)) == 32


@pytest.fixture
def json_serve(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes], int]]:
    """`chatdf serve` with LOG_FORMAT=json, its output (stdout and stderr) in one file, and
    its embedded Ray's metrics on a port of our choosing."""
    port = ray_port = free_port()
    while ray_port == port:  # a port just closed can be handed out again
        ray_port = free_port()
    with chatdf_serve(
        tmp_path,
        port=port,
        RAY_NAMESPACE="chatdf-json-log-test",
        LOG_FORMAT="json",
        HEARTBEAT_INTERVAL="0.5",
        RAY_METRICS_EXPORT_PORT=str(ray_port),
    ) as served:
        yield served.url, served.log, served.proc, ray_port


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.mark.slow
def test_served_json_logs_carry_ids_and_no_token_and_ray_metrics_port(
    json_serve: tuple[str, Path, subprocess.Popen[bytes], int],
) -> None:
    url, log, proc, ray_port = json_serve
    login = httpx.post(f"{url}/auth/dev-login", json={})
    token, user_id = login.json()["token"], login.json()["user"]["user_id"]
    auth = {"Authorization": f"Bearer {token}", "X-Request-ID": "json-log-test-1"}
    assert httpx.get(f"{url}/conversations", headers=auth).status_code == 200
    with connect(f"ws://{url.removeprefix('http://')}/ws?token={token}") as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ping"
        conv = httpx.post(f"{url}/conversations", headers=auth).json()["id"]
        sample = {"url": f"{url}/samples/sales.parquet"}
        # The first call binds an actor, on a server that has just started (timeout as in the
        # other served tests' first calls).
        added = httpx.post(
            f"{url}/conversations/{conv}/datasets", headers=auth, json=sample, timeout=60
        )
        assert added.status_code == 201, added.text
        while json.loads(ws.recv(timeout=60))["type"] != "dataset_loaded":
            pass
    # The session actor's metrics, on the port RAY_METRICS_EXPORT_PORT gave the embedded Ray.
    ray_metrics = f"http://127.0.0.1:{ray_port}/metrics"
    loads = "ray_chatdf_dataset_load_duration_seconds_count"
    assert wait_until(lambda: loads in httpx.get(ray_metrics, timeout=10).text, limit_s=60)
    proc.terminate()
    proc.wait(timeout=60)
    text = log.read_text()
    assert token not in text
    lines = json_lines(text)
    access = [
        line
        for line in lines
        if line.get("logger") == "uvicorn.access" and "/conversations" in line["message"]
    ]
    assert access, text[-3000:]
    assert access[0]["request_id"] == "json-log-test-1"
    assert access[0]["user_id"] == user_id
    assert any(line.get("logger") == "uvicorn.error" for line in lines)  # uvicorn's too
    ours = [line for line in text.splitlines() if "Application startup complete" in line]
    assert ours and all(line.startswith("{") for line in ours)
    said = [line["message"] for line in lines if line.get("logger") == "api.metrics"]
    assert said == [f"Ray metrics (session actors, tasks): http://127.0.0.1:{ray_port}/metrics"]


@pytest.fixture
def json_chat_live(ray_session: None, gemini_settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(gemini_settings.model_copy(update={"log_format": "json"})).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_actor_log_lines_of_a_turn_carry_the_edges_ids(
    json_chat_live: LiveServer, fake_gemini: FakeGemini, data_server: FakeDataServer
) -> None:
    """The request id the edge bound (the client's X-Request-ID) reaches the session actor with
    the call, and the turn's lines there carry it with the user, conversation and message."""
    turn = run_turn(json_chat_live, fake_gemini, data_server)
    actor = get_session_actor(turn.user_id, json_chat_live.settings)
    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
    node = ray._private.worker._global_node
    assert node is not None  # the tests' Ray runs in this process
    logs_dir = Path(node.get_logs_dir_path())
    found: list[dict[str, Any]] = []

    def turn_line_written() -> bool:
        found[:] = [
            line
            for path in logs_dir.glob(f"worker-*-{pid}.err")
            for line in json_lines(path.read_text(errors="replace"))
            if line.get("message", "").startswith("turn complete")
        ]
        return bool(found)

    assert wait_until(turn_line_written, limit_s=30), list(logs_dir.glob(f"*{pid}*"))
    line = found[-1]
    assert line["request_id"] == turn.request_id
    assert line["user_id"] == turn.user_id
    assert line["conversation_id"] == turn.conversation_id
    assert line["message_id"] == turn.message_id
    assert line["logger"] == "actors.chat" and line["level"] == "INFO"
