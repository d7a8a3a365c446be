"""A deploy while a user is active (issue 11, "a live actor keeps the settings and code it
started with"): an edge of the new deploy hands the user over to a new actor, new work runs on
the new code and settings, and the old actor's running turn still ends, saved and streamed to
every tab, on either edge."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import ray
from ray.exceptions import RayActorError

from actors import directory
from actors.answers import ANSWER_INTERRUPTED
from actors.version import deploy_version
from chatdf.settings import Settings
from tests.fakes.fake_gemini import FakeGemini
from tests.live import LiveServer, wait_until
from ws.inflight import TURN_LOST


class Rollout:
    """Two deploys of one cluster (the same code, a changed model setting): the old one's edge
    runs from the start, the new one's once `roll` is called."""

    def __init__(self, settings: Settings) -> None:
        saving = settings.model_copy(update={"turn_save_interval_s": 0.1})
        self.old_settings = saving.model_copy(update={"gemini_model": "model-before"})
        self.new_settings = saving.model_copy(update={"gemini_model": "model-after"})
        self.ns = settings.ray_namespace
        self.old_edge = LiveServer(self.old_settings).start()
        self.new_edge: LiveServer | None = None

    def roll(self) -> LiveServer:
        self.new_edge = LiveServer(self.new_settings).start()
        return self.new_edge

    def stop(self) -> None:
        self.old_edge.stop()
        if self.new_edge is not None:
            self.new_edge.stop()


@pytest.fixture
def rollout(ray_session: None, gemini_settings: Settings) -> Iterator[Rollout]:
    deploy = Rollout(gemini_settings)
    yield deploy
    deploy.stop()


def _messages(client: httpx.Client, conv: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = client.get(f"/conversations/{conv}").json()["messages"]
    return messages


def _health(actor: Any) -> dict[str, Any]:
    health: dict[str, Any] = ray.get(actor.check_health.remote(), timeout=30)
    return health


def _gone(actor: Any) -> bool:
    try:
        ray.get(actor.check_health.remote(), timeout=30)
        return False
    except RayActorError:
        return True


def _streamed_models(fake: FakeGemini) -> list[str]:
    return [r.model for r in fake.requests if r.method == "streamGenerateContent"]


def test_a_deploy_hands_the_user_over_and_the_running_turn_still_ends_everywhere(
    rollout: Rollout, fake_gemini: FakeGemini
) -> None:
    ns, old_edge = rollout.ns, rollout.old_edge
    token, user_id, old_client = old_edge.login(f"deploy-{uuid.uuid4().hex[:8]}@example.com")
    held = fake_gemini.script_text("the old deploy's answer.", chunks=2, hold_after=1)
    try:
        first, second = (old_client.post("/conversations").json()["id"] for _ in range(2))
        with old_edge.ws(token) as old_tab:
            posted = old_client.post(f"/conversations/{first}/messages", json={"content": "q1"})
            assert posted.status_code == 202
            old_tab.receive_until("chat_token")
            old_actor = directory.find_session_actor(user_id, ns)
            assert _health(old_actor)["version"] == deploy_version(rollout.old_settings)

            new_edge = rollout.roll()  # the deploy: a newer version
            new_client = new_edge.client(token)
            with new_edge.ws(token) as new_tab:
                # The new edge's first call hands the user over; the old actor still writes
                # the first conversation's answer, so a second turn there is refused.
                again = new_client.post(f"/conversations/{first}/messages", json={"content": "x"})
                assert again.status_code == 409
                new_actor = directory.find_session_actor(user_id, ns)
                assert new_actor._actor_id != old_actor._actor_id
                health = _health(new_actor)
                assert health["version"] == deploy_version(rollout.new_settings)
                assert health["taking_over"] is True
                assert _health(old_actor)["retiring"] is True

                # New work runs on the new deploy, and reaches the tabs of both edges.
                fake_gemini.script_text("the new deploy's answer.", chunks=2)
                path = f"/conversations/{second}/messages"
                posted = new_client.post(path, json={"content": "q2"})
                assert posted.status_code == 202
                for tab in (old_tab, new_tab):
                    done = tab.receive_until("chat_complete")[-1]
                    assert done["conversation_id"] == second
                    assert done["message"]["content"] == "the new deploy's answer."
                assert _streamed_models(fake_gemini) == ["model-before", "model-after"]

                # The old edge still remembers the old actor: it is sent on to the new one,
                # and never takes the user back to the older deploy.
                assert old_client.get("/usage").status_code == 200
                assert directory.find_session_actor(user_id, ns)._actor_id == new_actor._actor_id

                # The old actor's turn ends: saved whole, its end on every tab of either edge.
                held.release()
                for tab in (old_tab, new_tab):
                    done = tab.receive_until("chat_complete")[-1]
                    assert done["conversation_id"] == first
                    assert done["message"]["content"] == "the old deploy's answer."
                assert wait_until(lambda: _gone(old_actor))
                assert wait_until(lambda: not _health(new_actor)["taking_over"])
                assert len(directory.find_streaming(user_id, ns)) == 1
        question, answer = _messages(new_client, first)
        assert (question["content"], answer["content"]) == ("q1", "the old deploy's answer.")
        # The conversation is free again, now on the new deploy.
        fake_gemini.script_text("later.", chunks=1)
        posted = new_client.post(f"/conversations/{first}/messages", json={"content": "q3"})
        assert posted.status_code == 202
        new_client.close()
    finally:
        held.release()
        old_client.close()


def test_an_old_actor_that_dies_while_handing_over_loses_nothing_it_saved(
    rollout: Rollout, fake_gemini: FakeGemini
) -> None:
    """The old deploy's actor is killed mid-turn after the handover: every tab gets the turn's
    terminal event, and the new actor closes the answer row the old one left open."""
    ns, old_edge = rollout.ns, rollout.old_edge
    token, user_id, old_client = old_edge.login(f"deploy-kill-{uuid.uuid4().hex[:8]}@example.com")
    held = fake_gemini.script_text("first part. second part.", chunks=2, hold_after=1)
    try:
        conv = old_client.post("/conversations").json()["id"]
        with old_edge.ws(token) as old_tab:
            old_client.post(f"/conversations/{conv}/messages", json={"content": "q"})
            token_event = old_tab.receive_until("chat_token")[-1]
            assert wait_until(lambda: len(_messages(old_client, conv)) == 2, 20)  # saved so far
            old_actor = directory.find_session_actor(user_id, ns)
            new_edge = rollout.roll()
            new_client = new_edge.client(token)
            with new_edge.ws(token) as new_tab:
                assert new_client.get("/usage").status_code == 200  # the handover
                new_actor = directory.find_session_actor(user_id, ns)
                assert _health(new_actor)["taking_over"] is True
                ray.kill(old_actor, no_restart=True)
                for tab in (old_tab, new_tab):
                    end = tab.receive_until("chat_error")[-1]
                    assert (end["conversation_id"], end["error"]) == (conv, TURN_LOST)
                assert wait_until(lambda: not _health(new_actor)["taking_over"])
        closed = _messages(new_client, conv)[1]
        assert closed["content"] == f"{token_event['token'].rstrip()}\n\n{ANSWER_INTERRUPTED}"
        new_client.close()
    finally:
        held.release()
        old_client.close()


def test_a_conversation_is_free_once_the_old_actors_turn_there_ends(
    rollout: Rollout, fake_gemini: FakeGemini
) -> None:
    """The old actor runs turns in two conversations; the first one's end frees that
    conversation on the new deploy at once, while the other still runs there."""
    old_edge = rollout.old_edge
    token, _user_id, old_client = old_edge.login(f"deploy-free-{uuid.uuid4().hex[:8]}@ex.com")
    short = fake_gemini.script_text("short.", chunks=2, hold_after=1)
    long = fake_gemini.script_text("long.", chunks=2, hold_after=1)
    try:
        first, second = (old_client.post("/conversations").json()["id"] for _ in range(2))
        with old_edge.ws(token) as tab:
            for conv in (first, second):
                old_client.post(f"/conversations/{conv}/messages", json={"content": "go"})
                assert tab.receive_until("chat_token")[-1]["conversation_id"] == conv
            new_client = rollout.roll().client(token)
            busy = new_client.post(f"/conversations/{first}/messages", json={"content": "x"})
            assert busy.status_code == 409  # the handover: the old actor still writes both
            short.release()
            assert tab.receive_until("chat_complete")[-1]["conversation_id"] == first
            fake_gemini.script_text("on the new deploy.", chunks=1)
            again = new_client.post(f"/conversations/{first}/messages", json={"content": "y"})
            assert again.status_code == 202
            still = new_client.post(f"/conversations/{second}/messages", json={"content": "z"})
            assert still.status_code == 409
            long.release()
            ends = {e["conversation_id"] for e in tab.receive_until("chat_complete")}
            ends |= {e["conversation_id"] for e in tab.receive_until("chat_complete")}
            assert ends == {first, second}
        new_client.close()
    finally:
        short.release()
        long.release()
        old_client.close()
