"""What a query process holds: the SQL sandbox's fork server imports Polars and the query code,
nothing else (no Landlock needed to check that, unlike tests/actors/test_sql_sandbox.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_IMPORTS_PROBE = """
import json, sys
import actors.sql_child  # what the query fork server imports, and so every query process holds
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[1:])))
"""


def test_the_query_fork_server_imports_polars_and_the_query_code_only() -> None:
    """Each query is a fork of that server: what it imported is what a fork copies and a query
    touches. With the load code (PyArrow, NumPy, httpx, the settings) it held 113 MB RSS against
    46, and a query cost ≈ 10 ms more CPU (actors/scan.py). No HTTP client or settings module
    in the sandbox either."""
    heavy = ["pyarrow", "numpy", "httpx", "httpcore", "ssl", "pydantic", "sqlglot", "ray"]
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-c", _IMPORTS_PROBE, *heavy, "chatdf", "polars"],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    )
    found = json.loads(out.stdout)
    assert "polars" in found  # the probe sees imports at all
    assert [m for m in found if m.split(".")[0] in heavy] == []
    assert "chatdf.settings" not in found
