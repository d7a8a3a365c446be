"""The session actor's life: started by a call (not a socket), gone once idle, made again on use."""

from __future__ import annotations

import asyncio
import uuid

from chatdf.settings import Settings
from tests.live import LiveServer, session_alive, wait_until


def test_actor_lives_while_used_and_exits_once_idle_with_a_socket_open(
    ray_session: None, settings: Settings
) -> None:
    """A socket starts no actor and keeps none alive; a call starts one, which exits once idle
    for ACTOR_IDLE_TIMEOUT_S while the socket stays open; the next call starts a new one."""
    quick = settings.model_copy(update={"actor_idle_timeout_s": 0.5, "actor_reap_interval_s": 0.2})
    server = LiveServer(quick).start()
    try:
        token, user_id, client = server.login(f"reap-{uuid.uuid4().hex[:8]}@example.com")
        assert not session_alive(user_id, quick)  # sign-in alone starts nothing
        with server.ws(token):
            assert not session_alive(user_id, quick)  # nor does a socket
            assert client.get("/usage").status_code == 200  # a call does
            assert session_alive(user_id, quick)
            assert wait_until(lambda: not session_alive(user_id, quick))  # idle: it exits
            assert server.manager.count(user_id) == 1  # and the socket stays open
            assert client.get("/usage").status_code == 200  # next use makes a new one
            assert session_alive(user_id, quick)
        client.close()
    finally:
        server.stop()


async def test_concurrent_first_calls_all_wait_for_the_budget_to_load(settings: Settings) -> None:
    """The plain actor class: a call racing the first one never sees a half-loaded budget."""
    from actors.session import SessionActor
    from chatdf.db import Database, TokenUsage

    user_id = str(uuid.uuid4())
    db = Database(settings.resolved_database_url)
    db.create_schema()
    with db.session() as s:
        s.add(TokenUsage(user_id=user_id, input_tokens=300, output_tokens=45))
    actor = SessionActor(user_id, settings)
    try:
        _ready, usage = await asyncio.gather(actor.ready(), actor.usage())
        assert usage["tokens_used"] == 345
    finally:
        for task in list(actor._background):
            task.cancel()
        db.dispose()


def test_an_actor_taking_over_stays_while_its_predecessor_drains(settings: Settings) -> None:
    """Its binding must stay the user's while the older deploy's actor finishes: an idle exit
    would let the next actor start as if nothing ran, and sweep rows still being written."""
    from actors.session import SessionActor

    idle = settings.model_copy(update={"actor_idle_timeout_s": 0.0})
    actor = SessionActor(str(uuid.uuid4()), idle)
    assert actor.is_idle()
    actor.predecessors._handles.append(object())  # an older deploy's actor, still draining
    assert not actor.is_idle()
    actor.predecessors.clear()
    assert actor.is_idle()
    actor.db.dispose()


async def test_an_actor_prepares_its_model_client_at_start_not_at_the_first_message(
    gemini_settings: Settings,
) -> None:
    """An actor started for a user without a spare (cold) imports the SDK and builds the client
    in the background once started, so the user's first message does not pay for it."""
    from actors.session import SessionActor
    from chatdf.db import Database

    Database(gemini_settings.resolved_database_url).create_schema()
    actor = SessionActor(str(uuid.uuid4()), gemini_settings)
    try:
        assert actor.chat._llm is None
        await actor.ready()
        assert actor._model_prepared is not None
        await actor._model_prepared
        assert actor.chat._llm is not None
        assert actor.chat.llm() is actor.chat._llm  # the first turn takes this one
    finally:
        for task in list(actor._background):
            task.cancel()
        actor.db.dispose()
