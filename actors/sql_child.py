"""The process that runs one query: confined first (Landlock, memory limit), then Polars.

It starts as a fork of the SQL sandbox's fork server (`actors.sql_sandbox`), which imported
this module, and so Polars, once; the fork costs milliseconds. Before touching a dataset it
confines itself (`confine_query_process`): from then on it can read only the query's dataset
files and the Python installation, write nothing, open no TCP connection, and allocate at most
the query's memory. It gets only what it needs: the checked SQL, the tables' file paths and
formats, and the limits; never the settings, so never a key.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import sysconfig
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import polars as pl

import chatdf
from actors import landlock
from actors.scan import scan_local
from actors.sql import cap_result_bytes, collect_head, count_rows, plan_sql
from chatdf.errors import ChatdfError, SqlFailed

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
PROCESS_NAME = b"chatdf-query"
# Variables a query process keeps; everything else (keys, tokens, database URLs) is dropped.
_KEPT_ENVIRONMENT = ("PATH", "HOME", "USER", "TMPDIR", "LANG", "LC_ALL", "TZ", "POLARS_MAX_THREADS")


@dataclass(frozen=True)
class QueryTable:
    name: str
    path: str
    format: str


@dataclass(frozen=True)
class QueryLimits:
    max_rows: int
    max_bytes: int  # of the rows' JSON
    memory_bytes: int
    confine: bool = True  # the sandbox turns it off for SQL_SANDBOX=off or no Landlock (auto)


def main(conn: Connection, sql: str, tables: list[QueryTable], limits: QueryLimits) -> None:
    """Entry point in the forked process: sends ("rows", result), ("count", n) or ("error", e)."""
    try:
        _prepare_process(tables, limits)
        frames = {t.name: scan_local(Path(t.path), t.format) for t in tables}
        query = plan_sql(sql, frames)
        result = cap_result_bytes(collect_head(query, frames, limits.max_rows), limits.max_bytes)
        conn.send(("rows", result))
        if result["truncated"]:
            conn.send(("count", count_rows(query, frames)))
    except ChatdfError as exc:
        conn.send(("error", exc))
    except FileNotFoundError as exc:  # the copy went between hand-out and open (a refresh)
        conn.send(("missing", str(exc)))
    except PermissionError as exc:  # the sandbox refused something the guard let through
        conn.send(("denied", str(exc)))
    except MemoryError:
        conn.send(("error", SqlFailed("The query needed more memory than allowed")))
    except OSError as exc:  # e.g. a read the sandbox cut short before it began
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        conn.send(("error", SqlFailed(f"The query could not read its data: {first}")))
    finally:
        conn.close()


def _prepare_process(tables: list[QueryTable], limits: QueryLimits) -> None:
    libc = ctypes.CDLL(None)
    # Die with the fork server (which dies with its Ray worker, e.g. on a forced cancel).
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.prctl(_PR_SET_NAME, PROCESS_NAME, 0, 0, 0)  # `ps -e` shows chatdf-query
    for name in list(os.environ):
        if name not in _KEPT_ENVIRONMENT:
            del os.environ[name]
    _limit_memory(limits.memory_bytes)
    if limits.confine:
        landlock.confine(allowed_paths([t.path for t in tables]))


def allowed_paths(dataset_files: list[str]) -> list[tuple[str, int]]:
    """The query's files (read), the Python installation and system libraries (read + map).

    Not allowed: the data directory (database, other datasets), /proc (other processes'
    environments), /etc, /tmp, home directories, the repository.
    """
    trees = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
        str(Path(pl.__file__).resolve().parent.parent),  # site-packages, venv or not
        str(Path(__file__).resolve().parent),  # this package's code (lazy imports)
        str(Path(chatdf.__file__).resolve().parent),  # shared code and the bundled sample
        "/usr/lib",
        "/lib",
        "/lib64",
        "/usr/share/zoneinfo",
    }
    allowed = [(os.path.realpath(t), landlock.READ_TREE) for t in trees if t]
    allowed += [(os.path.realpath(f), landlock.READ_FILE) for f in dataset_files]
    allowed.append(("/dev/null", landlock.READ_FILE))
    return allowed


def _limit_memory(memory_bytes: int) -> None:
    """Cap the data segment (heap and private mappings) at what the process has plus the budget.

    An allocation past it fails: Python raises MemoryError, Polars aborts the process; the
    parent reports either as the query needing more memory than allowed.
    """
    in_use = _vm_data_bytes()
    limit = in_use + memory_bytes
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _vm_data_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0
