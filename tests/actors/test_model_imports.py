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
