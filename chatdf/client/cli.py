"""`chatdf chat`: questions to a running chatdf server from a terminal, or a script (--json)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from chatdf.client.async_client import DEFAULT_URL
from chatdf.client.errors import ApiError, ChatdfClientError, ConnectionFailed
from chatdf.client.models import Answer, Dataset, QueryResult
from chatdf.client.sync_client import Client
from chatdf.events import ChatToken, DatasetLoaded, QueryStatus, ServerEvent

HELP = """commands: /dataset URL (attach and wait), /sql SQL (run directly), /help, /quit"""
PHASES = {"executing": "running SQL", "formatting": "writing the answer"}


def add_chat_parser(sub: Any) -> None:
    """Adds `chat` to the `chatdf` command's subcommands (`sub` is argparse's subparsers)."""
    chat = sub.add_parser(
        "chat",
        help="ask a running chatdf server questions (interactive when no question is given)",
        description="Streams the answer, then prints its SQL and result table. Sign-in: "
        "--token or CHATDF_TOKEN; without one, dev login (a server on this machine).",
    )
    chat.add_argument("question", nargs="?", help="one question; omit it for interactive mode")
    chat.add_argument(
        "--url",
        default=os.environ.get("CHATDF_URL") or DEFAULT_URL,
        help=f"the server (default: CHATDF_URL or {DEFAULT_URL})",
    )
    chat.add_argument("--token", default=None, help="session token (default: CHATDF_TOKEN)")
    chat.add_argument("--email", default=None, help="dev login as this user (no token given)")
    chat.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="URL",
        help="attach a dataset by URL before asking, waiting until it is loaded (repeatable)",
    )
    chat.add_argument("--conversation", default=None, metavar="ID", help="continue this one")
    chat.add_argument(
        "--json", action="store_true", help="print one JSON object per answer (no streaming)"
    )
    chat.add_argument(
        "--rows", type=int, default=20, help="result rows to print in the table (default 20)"
    )


class Printer:
    """Writes answers for people (streamed, rich tables) or for machines (one JSON per answer)."""

    def __init__(self, as_json: bool, rows: int, out: TextIO, err: TextIO) -> None:
        from rich.console import Console

        self.as_json = as_json
        self.rows = max(rows, 0)
        self.out, self.err = out, err
        self.console = Console(file=out, highlight=False)
        self.notes = Console(file=err, highlight=False, style="dim", soft_wrap=True)

    def event(self, event: ServerEvent) -> None:
        if self.as_json:
            return
        if isinstance(event, ChatToken):
            self.out.write(event.token)
            self.out.flush()
        elif isinstance(event, QueryStatus) and event.phase in PHASES:
            self.notes.print(f"[{PHASES[event.phase]}]", markup=False)
        elif isinstance(event, DatasetLoaded):
            self.notes.print(f"loaded {event.name} ({event.row_count} rows)", markup=False)

    def dataset(self, dataset: Dataset) -> None:
        if not self.as_json:
            columns = ", ".join(f"{c.name} {c.type}" for c in dataset.schema_)
            self.notes.print(
                f"{dataset.name}: {dataset.row_count} rows ({columns}) from {dataset.url}",
                markup=False,
            )

    def answer(self, question: str, answer: Answer, datasets: list[Dataset]) -> None:
        if self.as_json:
            body = {"question": question, **answer.model_dump(mode="json", by_alias=True)}
            body["text"] = answer.text
            body["datasets"] = [d.model_dump(mode="json", by_alias=True) for d in datasets]
            self.out.write(json.dumps(body) + "\n")
            self.out.flush()
            return
        self.out.write("\n")
        if answer.sql_query:
            from rich.syntax import Syntax

            self.console.print(Syntax(answer.sql_query, "sql", word_wrap=True))
        if answer.result is not None:
            self.table(answer.result)
        if answer.result_error:
            self.notes.print(f"(the SQL could not be run again: {answer.result_error})")
        if answer.usage is not None:
            u = answer.usage
            self.notes.print(
                f"{answer.token_count} tokens · {u.remaining:,} of {u.token_limit:,} left in the "
                f"24-hour budget ({u.usage_percent:.1f} % used)"
            )

    def table(self, result: QueryResult) -> None:
        from rich.table import Table

        table = Table(*result.columns, show_lines=False)
        for row in result.rows[: self.rows]:
            table.add_row(*("" if v is None else str(v) for v in row))
        self.console.print(table)
        hidden = result.total_rows - min(len(result.rows), self.rows)
        if hidden > 0:
            self.notes.print(f"… {hidden} more rows ({result.total_rows} in all)")

    def error(self, exc: ChatdfClientError) -> None:
        if self.as_json:
            self.out.write(json.dumps({"error": exc.error, "details": exc.details}) + "\n")
            self.out.flush()
        print(f"chatdf: {exc}", file=self.err)


def sign_in(client: Client, token: str | None, email: str | None) -> None:
    """A given token as is; otherwise dev login, with a sentence saying what to do if refused."""
    if token:
        client.token = token
        return
    try:
        client.dev_login(email)
    except ApiError as exc:
        raise ApiError(
            exc.status,
            f"No token given (--token or CHATDF_TOKEN), and dev login was refused: {exc.error}",
            exc.details,
        ) from exc


def ask(
    client: Client, printer: Printer, conv: str, question: str, datasets: list[Dataset]
) -> None:
    """One question, streamed; Ctrl-C stops the turn (the partial answer is kept and shown)."""
    turn = client.ask(conv, question)
    try:
        for event in turn:
            printer.event(event)
    except KeyboardInterrupt:
        client.stop(conv)
        printer.notes.print("\n(stopped)")
        for event in turn:
            printer.event(event)
    assert turn.answer is not None
    printer.answer(question, turn.answer, datasets)


def lines(stdin: TextIO) -> Iterator[str]:
    """The interactive mode's input; a prompt only when a person is typing."""
    prompt = "chatdf> " if stdin.isatty() else ""
    if prompt:
        import readline  # noqa: F401 - line editing and history for input()
    while True:
        try:
            line = input(prompt) if prompt else stdin.readline()
        except EOFError:
            return
        if not prompt and not line:
            return
        if line.strip():
            yield line.strip()


def interact(client: Client, printer: Printer, conv: str, datasets: list[Dataset]) -> int:
    """Questions from stdin until EOF or /quit; a failed one is reported and the next asked.
    Exits 1 if any failed, so a script feeding questions learns of it."""
    failed = False
    if sys.stdin.isatty():
        printer.notes.print(HELP)
    try:
        for line in lines(sys.stdin):
            if line in ("/quit", "/exit"):
                break
            try:
                run_line(client, printer, conv, line, datasets)
            except ConnectionFailed:
                raise
            except ChatdfClientError as exc:
                printer.error(exc)
                failed = True
    except KeyboardInterrupt:
        printer.notes.print("")
    return 1 if failed else 0


def run_line(
    client: Client, printer: Printer, conv: str, line: str, datasets: list[Dataset]
) -> None:
    command, _, rest = line.partition(" ")
    if command == "/help":
        printer.notes.print(HELP)
    elif command == "/dataset" and rest.strip():
        dataset = client.add_dataset(conv, rest.strip())
        datasets.append(dataset)
        printer.dataset(dataset)
    elif command == "/sql" and rest.strip():
        result = client.query(conv, rest.strip())
        if printer.as_json:
            printer.out.write(json.dumps(result.model_dump(mode="json")) + "\n")
        else:
            printer.table(result)
    elif command.startswith("/"):
        printer.notes.print(f"unknown command {command}; {HELP}")
    else:
        ask(client, printer, conv, line, datasets)


def run_chat(args: argparse.Namespace) -> int:
    """The `chat` subcommand: 0 when every answer arrived, 1 on an error (printed)."""
    printer = Printer(args.json, args.rows, sys.stdout, sys.stderr)
    token = args.token or os.environ.get("CHATDF_TOKEN") or None
    with Client(args.url) as client:
        try:
            sign_in(client, token, args.email)
            conv = args.conversation or client.create_conversation().id
            datasets = []
            for url in args.dataset:
                datasets.append(client.add_dataset(conv, url))
                printer.dataset(datasets[-1])
            if args.question is None:
                return interact(client, printer, conv, datasets)
            ask(client, printer, conv, args.question, datasets)
            return 0
        except ChatdfClientError as exc:
            printer.error(exc)
            return 1
        except KeyboardInterrupt:
            return 130
