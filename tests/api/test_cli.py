"""The `chatdf` command: referral keys minted by the CLI sign users up; `serve --help` runs."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.cli import RedactTokens, main
from chatdf.settings import Settings
from tests.live import LiveServer

CHATDF = Path(sys.executable).parent / "chatdf"


@pytest.fixture
def keyed_server(ray_session: None, settings: Settings) -> Iterator[LiveServer]:
    """The live edge on the test database, with referral keys required for sign-up."""
    server = LiveServer(settings.model_copy(update={"require_referral_key": True})).start()
    yield server
    server.stop()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """Points the CLI's settings (read from the environment) at the test's database."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("DATA_DIR", settings.data_dir)


def sign_up(server: LiveServer, email: str, key: str | None) -> httpx.Response:
    with server.client() as anon:
        return anon.post("/auth/dev-login", json={"email": email, "referral_key": key})


def test_referral_key_create_prints_usable_keys(
    cli_env: None, keyed_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["referral-key", "create", "--count", "2"]) == 0
    keys = capsys.readouterr().out.split()
    assert len(keys) == 2 and len(set(keys)) == 2
    assert sign_up(keyed_server, "nokey@example.com", None).status_code == 403
    for n, key in enumerate(keys):
        assert sign_up(keyed_server, f"user{n}@example.com", key).status_code == 200
        # Single use: the same key does not sign up anyone else.
        assert sign_up(keyed_server, f"other{n}@example.com", key).status_code == 403


def test_referral_key_create_default_count_is_one(
    cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["referral-key", "create"]) == 0
    assert len(capsys.readouterr().out.split()) == 1


@pytest.mark.parametrize("count", ["0", "-1", "1001"])
def test_referral_key_create_rejects_bad_counts(
    cli_env: None, capsys: pytest.CaptureFixture[str], count: str
) -> None:
    assert main(["referral-key", "create", "--count", count]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--count" in captured.err


def test_unknown_command_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_serve_help_runs_as_installed_command() -> None:
    assert CHATDF.exists(), CHATDF
    done = subprocess.run(
        [str(CHATDF), "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--host" in done.stdout and "--port" in done.stdout


def test_log_lines_never_carry_session_tokens() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "GET /ws?token=%s HTTP/1.1" 101',
        ("127.0.0.1:5000", "s3cr3t-T0k3n"),
        None,
    )
    assert RedactTokens().filter(record) is True
    message = record.getMessage()
    assert "s3cr3t-T0k3n" not in message
    assert "token=[redacted]" in message


@pytest.mark.parametrize(
    ("name", "value"),
    [("DATASET_ALLOWED_NETWORKS", "10.0.0.0/33"), ("HEARTBEAT_INTERVAL", "often")],
)
def test_bad_configuration_is_one_readable_line_not_a_traceback(
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
) -> None:
    monkeypatch.setenv(name, value)
    assert main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chatdf: invalid configuration")
    assert f"  {name}: " in err
    assert "Traceback" not in err
