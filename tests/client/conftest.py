"""A live `chatdf serve` (subprocess, as a user starts it) on the loopback fakes, for the client."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from tests.fakes.fake_data_server import FakeDataServer
from tests.fakes.fake_gemini import FakeGemini
from tests.serving import chatdf_serve

SALES = pl.DataFrame({"region": ["N", "S", "N"], "revenue": [10, 20, 5]})
SALES_BY_REGION = "SELECT region, SUM(revenue) AS total FROM table1 GROUP BY region ORDER BY region"


@dataclass
class Served:
    """The running server and the fakes it talks to (the model, a dataset host)."""

    url: str
    log: Path
    proc: subprocess.Popen[bytes]
    gemini: FakeGemini
    data: FakeDataServer

    def sales_csv(self) -> str:
        """A fresh URL (each conversation refuses the same URL twice) of a 3-row CSV."""
        return self.data.add(f"/sales-{uuid.uuid4().hex[:8]}.csv", SALES.write_csv().encode())

    def missing_csv(self) -> str:
        return self.data.add(f"/gone-{uuid.uuid4().hex[:8]}.csv", status=404)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def unique_email() -> str:
    return f"client-{uuid.uuid4().hex[:10]}@example.com"


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One `chatdf serve` for every client test (each test signs in its own user): its own
    embedded Ray, SQLite, the real google-genai SDK pointed at FakeGemini, pings every 0.5 s."""
    tmp = tmp_path_factory.mktemp("client-serve")
    gemini = FakeGemini().start()
    data = FakeDataServer().start()
    try:
        with chatdf_serve(
            tmp,
            drop=("GEMINI_", "CHATDF_"),
            HEARTBEAT_INTERVAL="0.5",
            RAY_NAMESPACE=f"chatdf-client-{uuid.uuid4().hex[:6]}",
            GEMINI_API_KEY="fake-key",
            GEMINI_BASE_URL=gemini.base_url,
            LLM_BACKOFF_S="0.01",
            DATASET_ALLOW_PRIVATE_HOSTS="true",
            AUTH_RATE_LIMIT="1000/minute",  # every test signs in from 127.0.0.1
        ) as server:
            yield Served(server.url, server.log, server.proc, gemini, data)
    finally:
        data.stop()
        gemini.close()


@pytest.fixture(autouse=True)
def _model_script_used_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test scripts exactly the model replies it consumes; a leftover would feed the next."""
    yield
    if "served" in request.fixturenames:
        served: Served = request.getfixturevalue("served")
        left = served.gemini.pending()
        with served.gemini._lock:
            served.gemini._replies.clear()
        assert left == 0, f"{left} scripted model replies were not used"
