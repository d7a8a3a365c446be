"""Secrets stay out of logs and out of everything that runs next to user SQL."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from chatdf.settings import Settings

SECRETS: dict[str, Any] = {
    "gemini_api_key": "AIza-model-key",
    "model_api_key": "sk-provider-key",
    "google_client_secret": "oauth-client-secret",
    "database_url": "postgresql+psycopg://chatdf:db-password@db.internal/chatdf",
}


def test_secrets_do_not_show_in_the_settings_repr() -> None:
    settings = Settings(**SECRETS)
    assert "AIza-model-key" not in repr(settings)
    assert "oauth-client-secret" not in repr(settings)
    assert "sk-provider-key" not in repr(settings)
    assert settings.gemini_api_key.get_secret_value() == "AIza-model-key"


def test_tasks_get_settings_without_any_secret() -> None:
    task_settings = Settings(**SECRETS).for_tasks()
    pickled = pickle.dumps(task_settings)
    for value in (b"AIza-model-key", b"sk-provider-key", b"oauth-client-secret", b"db-password"):
        assert value not in pickled
    assert not task_settings.llm_configured
    assert task_settings.query_timeout_s == Settings().query_timeout_s  # the limits stay


@pytest.mark.usefixtures("ray_session")
async def test_sql_and_load_tasks_are_handed_the_task_copy(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the session actor's code submits to Ray: the blanked copy, for both tasks."""
    from actors import tasks

    keyed = settings.model_copy(update={"gemini_api_key": Settings(**SECRETS).gemini_api_key})
    seen: list[Any] = []

    class Capture:
        def __init__(self, real: Any) -> None:
            self.real = real

        def options(self, **kwargs: Any) -> Capture:
            return Capture(self.real.options(**kwargs))

        def remote(self, *args: Any) -> Any:
            seen.extend(a for a in args if isinstance(a, Settings))
            return self.real.remote(*args)

    monkeypatch.setattr(tasks, "run_sql_task", Capture(tasks.run_sql_task))
    await tasks.run_sql("SELECT 1 AS one", [], keyed)
    assert seen and all(not s.llm_configured for s in seen)
