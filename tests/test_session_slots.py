"""Session slots (issue 8: sessions at load): a node holds at most SESSION_ACTORS_PER_NODE session
actors; a new user's start asks an idle one to leave, and waits (then answers 503) while every
one is busy. `chatdf serve` as a user starts it, its embedded Ray given one session slot."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil  # Ray's bundled copy, on sys.path once conftest.py has imported ray
import pytest

from actors.spares import BUSY, LEFT_EARLY
from tests.live import wait_until
from tests.serving import ServeProcess, chatdf_serve, dataset_ready, query_process_running

SLOW_SQL = (  # 288^5 ≈ 2e12 rows: runs until the query's time limit or the server's stop
    "SELECT sum(a.revenue * b.revenue + c.revenue - d.revenue + e.revenue) AS s"
    " FROM table1 a, table1 b, table1 c, table1 d, table1 e"
)


@dataclass
class User:
    auth: dict[str, str]
    conversation: str


START_TIMEOUT_S = 4  # the second test's; the first keeps the default (a start on a busy machine)


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServeProcess]:
    """`chatdf serve` of one session slot; `@pytest.mark.parametrize("served", [env],
    indirect=True)` adds settings."""
    with chatdf_serve(
        tmp_path,
        RAY_NAMESPACE="chatdf-slots-test",
        SESSION_ACTORS_PER_NODE="1",
        WARM_SESSION_ACTORS="0",  # a spare would hold the one slot
        WARM_TASK_WORKERS="0",
        ACTOR_PRESSURE_IDLE_S="0",
        **getattr(request, "param", {}),
    ) as served:
        yield served


def sign_in(url: str, email: str) -> User:
    token = httpx.post(f"{url}/auth/dev-login", json={"email": email}).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    conversation = httpx.post(f"{url}/conversations", headers=auth).json()["id"]
    return User(auth, conversation)


def session_actor_processes(served: ServeProcess) -> int:
    count = 0
    for proc in psutil.Process(served.proc.pid).children(recursive=True):
        try:
            if "SessionActor" in " ".join(proc.cmdline()) and proc.is_running():
                count += proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            continue
    return count


@pytest.mark.slow
def test_one_session_slot_holds_one_actor_and_an_idle_one_leaves_for_the_next_user(
    served: ServeProcess,
) -> None:
    """Two users take turns with one slot: each call of the other makes the idle actor leave
    (its process ends) so that the other's can start."""
    url = served.url
    alice, bob = sign_in(url, "alice@example.com"), sign_in(url, "bob@example.com")
    assert httpx.get(f"{url}/usage", headers=alice.auth, timeout=60).status_code == 200
    assert session_actor_processes(served) == 1
    for user in (bob, alice, bob):
        assert httpx.get(f"{url}/usage", headers=user.auth, timeout=60).status_code == 200
        assert wait_until(lambda: session_actor_processes(served) == 1)  # the other ended
    assert served.log.read_text().count(LEFT_EARLY) == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "served", [{"SESSION_START_TIMEOUT_S": str(START_TIMEOUT_S)}], indirect=True
)
def test_a_start_with_every_slot_busy_answers_503_and_changes_nothing(
    served: ServeProcess,
) -> None:
    """Alice's actor runs a long query: it is busy, so it does not leave. Bob's message waits
    SESSION_START_TIMEOUT_S for a slot, then answers 503 busy; his conversation is unchanged."""
    url = served.url
    alice, bob = sign_in(url, "alice@example.com"), sign_in(url, "bob@example.com")
    added = httpx.post(
        f"{url}/conversations/{alice.conversation}/datasets",
        headers=alice.auth,
        json={"url": f"{url}/samples/sales.parquet"},
        timeout=60,
    )
    assert added.status_code == 201, added.text
    assert wait_until(lambda: dataset_ready(url, alice.auth, alice.conversation))

    def slow_query() -> None:
        # Cut off when the server stops.
        with httpx.Client(timeout=120) as client, contextlib.suppress(httpx.HTTPError):
            client.post(
                f"{url}/conversations/{alice.conversation}/query",
                headers=alice.auth,
                json={"sql": SLOW_SQL},
            )

    threading.Thread(target=slow_query, daemon=True).start()
    assert wait_until(lambda: query_process_running(served.proc.pid)), served.log.read_text()
    answer = httpx.post(
        f"{url}/conversations/{bob.conversation}/messages",
        headers=bob.auth,
        json={"content": "How many rows?"},
        timeout=60,
    )
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body == {
        "error": BUSY,
        "details": f"No session could start within {START_TIMEOUT_S} s"
        " (every session slot was taken)",
    }
    detail = httpx.get(f"{url}/conversations/{bob.conversation}", headers=bob.auth).json()
    assert detail["messages"] == [], json.dumps(detail)
    assert session_actor_processes(served) == 1  # the waiting start was ended with the call
    assert LEFT_EARLY not in served.log.read_text()


def test_the_default_slot_count_follows_the_nodes_memory() -> None:
    """SESSION_ACTORS_PER_NODE=0: 40 % of the memory at 128 MiB per actor, never below 4."""
    from actors.capacity import default_session_slots, session_slots

    assert default_session_slots(24 * 10**9) == 71  # 24 GB
    assert default_session_slots(24 * 2**30) == 76  # 24 GiB
    assert default_session_slots(2**30) == 4  # 1 GiB: 3.2, raised to the floor
    assert session_slots(7) == 7  # a configured count is kept as it is
