"""Only the configured provider's SDK is imported: the chat modules load neither on their own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
from actors import chat, turn  # what the session actor imports for chat
from actors.llm import import_provider
from chatdf.settings import Settings
before = sorted(m for m in ("google.genai", "openai") if m in sys.modules)
import_provider(Settings(model_provider=sys.argv[1]))
after = sorted(m for m in ("google.genai", "openai") if m in sys.modules)
print(json.dumps([before, after]))
"""


@pytest.mark.parametrize(("provider", "sdk"), [("gemini", "google.genai"), ("openai", "openai")])
def test_only_the_configured_sdk_is_imported(provider: str, sdk: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, provider], capture_output=True, text=True, check=True
    )
    before, after = json.loads(out.stdout)
    assert before == []
    assert after == [sdk]


_TYPES_PROBE = """
import json, sys
from google.genai import types
from actors.llm import import_provider
from chatdf.settings import Settings
NAMES = ("GenerateContentResponse", "Candidate", "Part", "FunctionCall", "FunctionResponse",
         "GenerateContentConfig", "ToolConfig", "GenerateContentResponseUsageMetadata")
built = lambda: [getattr(types, n).__pydantic_complete__ for n in NAMES]
before = built()
import_provider(Settings(model_provider="gemini"))
print(json.dumps([before, built()]))
"""


def test_importing_the_gemini_provider_builds_the_sdk_types_a_first_turn_uses() -> None:
    """google-genai builds each type's pydantic schema at its first use (measured: ≈ 45 ms of
    CPU, 64 % of a session actor's first turn); the import done by a warm-up (a spare's, or an
    actor's start) builds them instead, offline (actors/gemini.py warm_types)."""
    out = subprocess.run(
        [sys.executable, "-c", _TYPES_PROBE], capture_output=True, text=True, check=True
    )
    before, after = json.loads(out.stdout)
    assert not any(before)  # deferred: the probe would show nothing otherwise
    assert all(after), after
    assert "could not build" not in out.stderr
