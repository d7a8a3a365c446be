"""The event pipe (actors/event_pipe.py, ws/event_pipe.py): an actor on the edge's node streams
its events over a Unix socket, one on another node (or with EVENT_PIPE=false) through Ray; the
pipe takes only the connection a subscription waits for, and a pipe whose edge end closes ends
the subscription in the actor at once."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import ray

from actors.fanout import IN_FLIGHT
from actors.session_ray import get_session_actor
from chatdf.settings import Settings
from tests.live import LiveServer, wait_until


def health(actor: Any) -> dict[str, Any]:
    return cast(dict[str, Any], ray.get(actor.check_health.remote()))


@pytest.fixture
def ray_streams(ray_session: None, settings: Settings) -> Iterator[LiveServer]:
    server = LiveServer(settings.model_copy(update={"event_pipe": False})).start()
    yield server
    server.stop()


def stream_once(live: LiveServer, tag: str) -> dict[str, Any]:
    """Publishes through the user's actor; returns its health once the tab got the events."""
    token, user_id, client = live.login(f"{tag}-{uuid.uuid4().hex[:8]}@ex.com")
    try:
        with live.ws(token) as ws:
            actor = get_session_actor(user_id, live.settings)
            assert wait_until(lambda: health(actor)["subscribers"] == 1)
            for n in range(50):
                ray.get(actor.publish.remote({"type": "unknown_type", "n": n}))
            assert [ws.receive_json()["n"] for _ in range(50)] == list(range(50))
            return health(actor)
    finally:
        client.close()


def test_events_of_an_actor_on_the_edges_node_take_the_pipe(live: LiveServer) -> None:
    got = stream_once(live, "piped")
    assert got["piped"] == 1


def test_with_event_pipe_off_they_take_a_ray_stream(ray_streams: LiveServer) -> None:
    assert ray_streams.manager.following.pipes is None
    got = stream_once(ray_streams, "ray-stream")
    assert got["piped"] == 0


def test_an_actor_on_another_node_streams_through_ray(live: LiveServer) -> None:
    """The actor compares the edge's node with its own: on another node it declines the pipe
    (the socket is not reachable there) and the edge subscribes through Ray. Here the edge
    names a node that is not the actor's."""
    live.manager.following.pipes.node_id = "0" * 56
    assert stream_once(live, "other-node")["piped"] == 0


def test_an_edge_that_cannot_listen_streams_through_ray(
    ray_session: None, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket path past the kernel's 108 bytes (a long TMPDIR) cannot be bound: the edge
    starts all the same, without the pipe, and its events take Ray's stream."""
    long_dir = tmp_path / ("d" * 120)
    long_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_dir))
    server = LiveServer(settings).start()
    try:
        assert server.manager.following.pipes is None
        assert stream_once(server, "no-pipe")["piped"] == 0
    finally:
        server.stop()


def test_the_pipe_is_private_and_takes_only_an_awaited_subscription(live: LiveServer) -> None:
    """The socket's directory is the edge user's alone; a connection that names no awaited
    subscription (or the wrong secret) is closed without a byte."""
    path = live.manager.following.pipes.path
    mode = stat.S_IMODE(os.stat(Path(path).parent).st_mode)
    assert mode == 0o700
    hellos = (b"no-such-subscription secret\n", b"\n", b"x" * 10_000 + b"\n", b"y" * 100_000)
    for hello in hellos:  # the last one is past the reader's line limit
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(path)
            try:
                sock.sendall(hello)
                got = sock.recv(16)
            except (BrokenPipeError, ConnectionResetError):
                got = b""  # closed while the hello was still being written
            assert got == b""  # closed by the edge, nothing sent


def test_an_edge_end_that_closes_ends_the_subscription_in_the_actor(live: LiveServer) -> None:
    """A second subscription of the edge takes the pipe, gets its first batch, and closes its
    end (as a dying edge's does): the actor drops it without an event to fail on, and the
    tab's own subscription streams on."""
    token, user_id, client = live.login(f"pipe-gone-{uuid.uuid4().hex[:8]}@ex.com")
    try:
        with live.ws(token) as ws:
            actor = get_session_actor(user_id, live.settings)
            assert wait_until(lambda: health(actor)["piped"] == 1)
            first = live.call(_subscribe_and_close(live, actor))
            assert [event["type"] for _stamp, event in first] == [IN_FLIGHT]
            assert wait_until(lambda: health(actor)["subscribers"] == 1, limit_s=10)
            assert health(actor)["piped"] == 1
            ray.get(actor.publish.remote({"type": "unknown_type", "n": "after"}))
            assert ws.receive_json()["n"] == "after"
    finally:
        client.close()


async def _subscribe_and_close(live: LiveServer, actor: Any) -> list[Any]:
    pipes = live.manager.following.pipes
    items = await pipes.subscribe(actor, uuid.uuid4().hex, float("inf"), "", in_flight=8)
    assert items is not None
    first: list[Any] = await anext(items)
    await items.aclose()
    return first


def test_an_actor_without_the_pipe_method_is_left_to_ray(live: LiveServer) -> None:
    """During a deploy the edge may stream from an older deploy's actor, whose class has no
    `subscribe_pipe`: the pipe declines it (the edge then subscribes through Ray) instead of
    failing every try. Any Ray actor without the method shows it: this edge's hub."""
    hub = live.manager.following._hub
    assert not hasattr(hub, "subscribe_pipe")
    pipes = live.manager.following.pipes
    assert live.call(pipes.subscribe(hub, uuid.uuid4().hex, 0.0, "", 8)) is None
