"""The `chatdf` command: `serve` runs the edge under uvicorn, `referral-key create` mints keys,
`chat` asks a running server (chatdf/client/cli.py), `db upgrade` / `db current` migrate the
schema or say its revision."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from chatdf import logs
from chatdf.client.cli import add_chat_parser, run_chat
from chatdf.logs import TOKEN_IN_TEXT, RedactTokens
from chatdf.settings import Settings, get_settings

__all__ = ["TOKEN_IN_TEXT", "RedactTokens", "main"]


def install_redaction() -> None:
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error", ""):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def serve(settings: Settings) -> None:
    import uvicorn

    from api.app import create_app
    from ws.protocol import uvicorn_ws_options

    logs.configure(settings.log_format, settings.log_level)  # stderr, human or JSON lines
    install_redaction()
    # JSON: uvicorn's own lines (start-up, access log) go through the root handler too.
    uvicorn_logging = {"log_config": None} if settings.log_format == "json" else {}
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        **uvicorn_ws_options(settings),  # protocol-level pings too; see ws/protocol.py
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        # Requests still waiting (on a session start, a slow query) are cut off after this at
        # SIGTERM, so a service manager's stop never hangs on them.
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        **uvicorn_logging,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    install_redaction()  # uvicorn configures its loggers in Config(); filter them after
    server.run()


def create_referral_key(settings: Settings) -> str:
    from chatdf.db import Database
    from chatdf.store import create_referral_key as mint

    db = Database(settings.resolved_database_url)
    db.create_schema()
    with db.session() as s:
        key = mint(s)
    db.dispose()
    return key


def run_db_command(settings: Settings, action: str) -> int:
    """`db upgrade` brings the database to this code's newest migration (as every start does);
    `db current` prints the revision it is at, and whether that is this code's newest."""
    from sqlalchemy.exc import SQLAlchemyError

    from chatdf import migrations
    from chatdf.db import Database

    db = Database(settings.resolved_database_url, busy_timeout_s=settings.database_busy_timeout_s)
    try:
        if action == "upgrade":
            with db.schema_lock() as conn:
                migrations.upgrade(conn)
        current, head = db.current_revision(), migrations.head_revision()
    except migrations.NewerSchema as newer:
        print(f"chatdf: {newer}", file=sys.stderr)
        return 1
    except SQLAlchemyError as failed:
        # The driver's sentence names host and port, never the URL's password.
        reason = str(getattr(failed, "orig", None) or failed).splitlines()[0]
        print(f"chatdf: database error: {reason}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    if current is None:
        print("none (an empty database, or one made before migrations: `chatdf db upgrade`)")
    else:
        if current == head:
            print(f"{current} (head)")
        elif migrations.is_known(current):
            print(f"{current} (head is {head})")
        else:
            print(f"{current} (newer than this chatdf's head {head})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatdf", description="Chat with your data.")
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("serve", help="run the API and WebSocket edge")
    srv.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=None, help="port (default 8000)")
    ref = sub.add_parser("referral-key", help="manage referral keys")
    ref_sub = ref.add_subparsers(dest="action", required=True)
    create = ref_sub.add_parser("create", help="create single-use referral keys")
    create.add_argument("--count", type=int, default=1, help="how many keys (default 1)")
    add_chat_parser(sub)  # a client of a running server: chatdf/client/cli.py
    dbc = sub.add_parser("db", help="schema migrations (DATABASE_URL / DATA_DIR, as serve)")
    db_sub = dbc.add_subparsers(dest="action", required=True)
    db_sub.add_parser("upgrade", help="upgrade the database to the newest schema revision")
    db_sub.add_parser("current", help="print the database's schema revision")
    return parser


def describe_invalid_settings(invalid: ValidationError) -> str:
    """One line per bad environment variable, named as the operator typed it."""
    lines = ["chatdf: invalid configuration"]
    for error in invalid.errors():
        name = ".".join(str(part) for part in error["loc"]).upper() or "settings"
        lines.append(f"  {name}: {error['msg']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "chat":
        return run_chat(args)  # a client: the server's settings do not apply
    overrides = {
        k: v
        for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None)))
        if v is not None
    }
    try:
        settings = get_settings(**overrides)
    except ValidationError as invalid:
        print(describe_invalid_settings(invalid), file=sys.stderr)
        return 2
    if args.command == "serve":
        serve(settings)
        return 0
    if args.command == "referral-key" and args.action == "create":
        if args.count < 1 or args.count > 1000:
            print("--count must be between 1 and 1000", file=sys.stderr)
            return 2
        for _ in range(args.count):
            print(create_referral_key(settings))
        return 0
    if args.command == "db":
        return run_db_command(settings, args.action)
    return 2


if __name__ == "__main__":
    sys.exit(main())
