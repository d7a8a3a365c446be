"""Runs one checked query in a fresh, confined process (`actors.sql_child`) and relays its items.

The second wall behind the SQL guard: were the guard ever to let a file-reading construct
through, the process that executes the query could still read nothing but that query's dataset
files and could open no network connection (Landlock), and could not grow past
QUERY_MEMORY_BYTES (RLIMIT_DATA). Processes come from a `multiprocessing` fork server that
imported Polars once per Ray worker, so a query pays a fork (milliseconds), not an import.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import multiprocessing
import os
import signal
from collections.abc import Iterator
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.context import ForkServerContext, ForkServerProcess, set_spawning_popen
from typing import Any, Literal

from actors import landlock
from actors.sql_child import QueryLimits, QueryTable, main
from chatdf.errors import SqlFailed

log = logging.getLogger(__name__)

SandboxMode = Literal["auto", "required", "off"]
UNAVAILABLE = "The SQL sandbox is required (SQL_SANDBOX=required) but this kernel has no Landlock"
_context: ForkServerContext | None = None
_warned = False


def run_confined(
    sql: str, tables: list[QueryTable], limits: QueryLimits, mode: SandboxMode
) -> Iterator[tuple[str, Any]]:
    """Yields the child's items in order: ("rows", result), then ("count", n) when truncated.

    Also ("error", ChatdfError), ("missing", text) for a vanished file, ("denied", text) when
    the sandbox stopped a read. A process that dies (memory limit, crash) raises SqlFailed.
    """
    limits = dataclasses.replace(limits, confine=limits.confine and _confine(mode))
    context = _fork_server()
    receiver, sender = context.Pipe(duplex=False)
    process = _QueryProcess(target=main, args=(sender, sql, tables, limits), daemon=True)
    process.start()
    sender.close()
    try:
        while True:
            try:
                item: tuple[str, Any] = receiver.recv()
            except EOFError:
                process.join()
                if process.exitcode not in (0, None):
                    raise _died(process.exitcode, limits.memory_bytes) from None
                return
            yield item
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
        process.join()


class _NoMainPopen(popen_forkserver.Popen):
    """The fork server's launch, minus the parent's `__main__`.

    `multiprocessing` tells each child to run the parent's main script again (as `__mp_main__`)
    before its target: in a Ray worker that is Ray's worker script, which imports Ray, ≈ 0.3 s
    per query (measured: 0.375 s → 0.05 s per query without it). The target
    (`actors.sql_child.main`) is found by module name, so the child needs no main at all. This
    is `popen_forkserver.Popen._launch` (CPython 3.11–3.13) with those two keys dropped.
    """

    def _launch(self, process_obj: Any) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        _parent_w = os.dup(w)  # the child's sentinel of this parent, as in CPython
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))  # type: ignore[attr-defined]
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _QueryProcess(ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> _NoMainPopen:  # noqa: N802  # multiprocessing's name
        return _NoMainPopen(process_obj)


def _confine(mode: SandboxMode) -> bool:
    global _warned
    if mode == "off":
        return False
    if landlock.abi_version() >= 1:
        return True
    if mode == "required":
        raise SqlFailed(UNAVAILABLE)
    if not _warned:
        log.warning("Landlock is unavailable: queries run without the file and network sandbox")
        _warned = True
    return False


def _fork_server() -> ForkServerContext:
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["actors.sql_child"])
        _context = context
    return _context


def start_fork_server() -> None:
    """Starts this worker's query fork server now (it imports Polars), not at the first query."""
    from multiprocessing import forkserver

    _fork_server()
    forkserver.ensure_running()


def _died(exitcode: int, memory_bytes: int) -> SqlFailed:
    if exitcode == -signal.SIGABRT:  # how Polars ends when an allocation fails
        return SqlFailed(
            "The query needed more memory than allowed and was stopped",
            f"limit {memory_bytes:,} bytes (QUERY_MEMORY_BYTES)",
        )
    return SqlFailed("The query engine stopped unexpectedly", f"exit status {exitcode}")
