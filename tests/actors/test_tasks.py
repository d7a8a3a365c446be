"""actors.tasks: its callers never load Polars, and nothing a task sends back needs Polars."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from actors.fetch import DatasetUnreachable
from actors.tasks import _portable_errors
from chatdf.errors import SqlFailed

ROOT = Path(__file__).resolve().parents[2]

CALLER_SIDE = """
import sys
import actors.session, actors.session_ray, actors.spares, actors.tasks
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("polars", "pyarrow", "sqlglot"))
assert not loaded, loaded
"""


def test_the_session_actor_side_imports_no_polars_and_no_sql_parser() -> None:
    """A fresh interpreter (this one already has Polars) imports what the actor imports."""
    run = subprocess.run(
        [sys.executable, "-c", CALLER_SIDE], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_engine_exceptions_cross_back_as_builtins() -> None:
    """Ray pickles a task's exception by class: a Polars one would load Polars in the caller."""
    with pytest.raises(RuntimeError) as info, _portable_errors():
        pl.DataFrame({"a": [1]}).select("missing")
    assert str(info.value).startswith("polars.exceptions.ColumnNotFoundError: ")
    assert isinstance(info.value.__cause__, pl.exceptions.ColumnNotFoundError)


def test_own_and_builtin_errors_pass_unchanged() -> None:
    errors = [SqlFailed("The query failed"), DatasetUnreachable("Gone"), OSError("disk full")]
    for error in errors:
        with pytest.raises(type(error)) as info, _portable_errors():
            raise error
        assert info.value is error


@pytest.mark.usefixtures("ray_session")
def test_warm_up_readies_distinct_workers_with_polars_and_the_fork_server() -> None:
    """Each warm-up leaves a task worker with Polars imported and its query fork server
    running, so the first real query forks at once instead of starting Python twice."""
    import psutil
    import ray

    from actors.tasks import warm_task_workers

    pids = set(ray.get(warm_task_workers(3), timeout=120))
    assert len(pids) >= 2  # Ray leased workers side by side, not one after another
    for pid in pids:
        children = psutil.Process(pid).children()
        assert any("forkserver" in " ".join(c.cmdline()) for c in children), children
