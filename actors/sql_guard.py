"""The SQL sandbox: decides, before any I/O, whether SQL may run on a conversation's tables."""

from __future__ import annotations

import re
from collections.abc import Collection

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokenizer_core import Token, TokenType
from sqlglot.tokens import Tokenizer

from chatdf.errors import SqlRefused

# sqlglot's DuckDB grammar is the closest to Polars SQL (`::` casts, `//`, EXCLUDE/REPLACE,
# QUALIFY, GROUP BY ALL, list literals); its Postgres grammar rejects more valid Polars SQL.
DIALECT = "duckdb"

SINGLE_SELECT = "Only a single SELECT query is allowed"
UNPARSEABLE = (
    "The SQL could not be parsed; write one standard SELECT with double-quoted identifiers"
)

# Anything that is not a read: statements, writes, session state, catalogs. The root must be
# a SELECT anyway; these also catch such nodes nested where a dialect allows them.
_FORBIDDEN_NODES: tuple[type[exp.Expr], ...] = (
    exp.DDL,
    exp.DML,
    exp.Command,
    exp.Copy,
    exp.Set,
    exp.Pragma,
    exp.Attach,
    exp.Detach,
    exp.Use,
    exp.Describe,
    exp.Show,
    exp.Alter,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Merge,
    exp.Kill,
    exp.Export,
    exp.Install,
    exp.Into,
)

# Polars' table functions are read_csv/read_parquet/read_ipc/read_json/read_ndjson today; any
# read_*/scan_* spelling is refused so that a new one in a later Polars is refused too.
_FILE_FUNCTION = re.compile(r"^(read|scan)_", re.IGNORECASE)


def check_sql(
    sql: str, table_names: Collection[str], max_chars: int, *, cross_check: bool = True
) -> list[str]:
    """Refuse `sql` unless it is one read-only SELECT over `table_names`; return the tables read.

    The returned names are spelled as registered, so the caller loads and registers only those.
    Raises SqlRefused; never touches a file or the network. `cross_check=False` skips Polars'
    own parser (sqlglot checks only) so a process can refuse early without loading Polars;
    whoever goes on to read files must run the full check.
    """
    if len(sql) > max_chars:
        raise SqlRefused(
            f"The SQL is too long ({len(sql):,} characters; at most {max_chars:,} are allowed)"
        )
    _refuse_deep_nesting(_refuse_ambiguous_lexing(sql))
    try:
        query = _parse_single_select(sql)
        registered = {name.lower(): name for name in table_names}
        cte_names = {cte.alias_or_name.lower() for cte in query.find_all(exp.CTE)}
        _refuse_forbidden_nodes(query)
        _refuse_file_functions(query)
        _refuse_file_function_names(query)
        used = _check_table_references(query, registered)
        if cross_check:
            _cross_check_with_polars(sql, registered, cte_names)
    except RecursionError:  # a shape the depth bound below did not foresee
        raise SqlRefused(TOO_DEEP) from None
    return sorted(used)


MAX_NESTING = 64  # parentheses, and unary operators in a row (NOT NOT ..., - - ...)
TOO_DEEP = f"The SQL is nested too deeply (at most {MAX_NESTING} levels); write it more simply"
_UNARY = {TokenType.NOT, TokenType.DASH, TokenType.PLUS, TokenType.TILDE}


def _refuse_deep_nesting(tokens: list[Token]) -> None:
    """Both parsers recurse per level: bound the levels before either runs."""
    depth = run = 0
    for token in tokens:
        if token.token_type == TokenType.L_PAREN:
            depth += 1
        elif token.token_type == TokenType.R_PAREN:
            depth -= 1
        run = run + 1 if token.token_type in _UNARY else 0
        if depth > MAX_NESTING or run > MAX_NESTING:
            raise SqlRefused(TOO_DEEP)


# What may stand between two tokens: whitespace, `--` comments ended by a newline, and
# `/* */` comments with no `/*` inside. Polars' parser (sqlparser) nests block comments and
# ends line comments only at a newline; these are the readings both parsers share.
_GAP = re.compile(r"(?:\s|--[^\r\n]*(?:\n|\Z)|/\*(?:(?!/\*|\*/).)*\*/)*", re.DOTALL)
# Characters that, right before a quote, make a prefixed literal in one parser or the other
# (X'..' hex, E'..' escapes, N'..', B'..', R'..', U&'..', $tag$..$tag$).
_PREFIX = re.compile(r"[A-Za-z0-9_&$]")
_PLAIN_QUOTED = {TokenType.STRING: "'", TokenType.IDENTIFIER: '"'}
LEXING_REFUSED = (
    "The SQL uses a construct the query engine may read differently ({what}); "
    "use plain 'single-quoted' strings, \"double-quoted\" names and simple comments"
)


def _refuse_ambiguous_lexing(sql: str) -> list[Token]:
    """Refuse text whose strings, quoted names or comments the two parsers could split apart.

    The checks run on sqlglot's reading and Polars executes its own: were the two to disagree
    on where a string or comment ends (Polars honours backslash escapes in X'..' strings,
    sqlglot does not), code one parser sees as a string could be code to the other. So only
    constructs both read alike pass: plain '...' strings ('' escapes a quote), "..." names,
    and the comments in _GAP; everything else between tokens is refused.
    """
    try:
        tokens = Tokenizer(dialect=DIALECT).tokenize(sql)
    except SqlglotError as exc:
        raise SqlRefused(
            UNPARSEABLE,
            details=str(exc)[:1000],
        ) from exc
    position = 0
    for token in tokens:
        _refuse_gap(sql, position, token.start)
        quote = _PLAIN_QUOTED.get(token.token_type)
        raw = sql[token.start : token.end + 1]
        if "STRING" in token.token_type.name and quote != "'":
            raise SqlRefused(LEXING_REFUSED.format(what=f"a {token.token_type.name} literal"))
        if quote is not None and raw[:1] == quote:
            if token.start > 0 and _PREFIX.match(sql[token.start - 1]):
                raise SqlRefused(LEXING_REFUSED.format(what=f"a prefixed literal near {raw[:20]}"))
        elif any(c in raw for c in "'\"`\\$#"):
            raise SqlRefused(LEXING_REFUSED.format(what=f"{raw[:20]!r}"))
        position = token.end + 1
    _refuse_gap(sql, position, len(sql))
    return tokens


def _refuse_gap(sql: str, start: int, end: int) -> None:
    gap = sql[start:end]
    if gap and _GAP.fullmatch(gap) is None:
        raise SqlRefused(LEXING_REFUSED.format(what=f"{gap.strip()[:20]!r} between tokens"))


def _parse_single_select(sql: str) -> exp.Query:
    """Parse with sqlglot; anything it cannot read, or more than one statement, is refused."""
    try:
        statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except SqlglotError as exc:
        raise SqlRefused(
            UNPARSEABLE,
            details=str(exc)[:1000],
        ) from exc
    if not statements:
        raise SqlRefused("The SQL is empty; write one SELECT query")
    if len(statements) > 1:
        raise SqlRefused(SINGLE_SELECT, details=f"found {len(statements)} statements")
    root = statements[0]
    while isinstance(root, exp.Subquery):  # "(SELECT ...)" as a whole statement
        root = root.this
    if not isinstance(root, (exp.Select, exp.SetOperation)):
        raise SqlRefused(SINGLE_SELECT, details=f"found a {root.key.upper()} statement")
    return root


def _refuse_forbidden_nodes(query: exp.Query) -> None:
    for node in query.walk():
        if isinstance(node, exp.Lateral):
            raise SqlRefused("LATERAL is not allowed; use a join or a subquery instead")
        if isinstance(node, _FORBIDDEN_NODES):
            raise SqlRefused(SINGLE_SELECT, details=f"{node.key.upper()} is not allowed")


def _refuse_file_functions(query: exp.Query) -> None:
    """Refuse file-reading functions anywhere, not only in FROM (sqlglot maps some to own nodes)."""
    for func in query.find_all(exp.Func):
        name = func.name if isinstance(func, exp.Anonymous) else func.sql_name()
        if _FILE_FUNCTION.match(name):
            raise _table_function_refusal(name.lower())


def _refuse_file_function_names(query: exp.Query) -> None:
    """No CTE, alias or table may be named like a table function: a name that clears one
    reading (a CTE called read_csv) must never clear the real function in the other."""
    for node in query.walk():
        if isinstance(node, (exp.CTE, exp.TableAlias, exp.Table)):
            name = node.alias_or_name if isinstance(node, exp.CTE) else node.name
            if _FILE_FUNCTION.match(name or ""):
                raise _table_function_refusal(name.lower())


def _check_table_references(query: exp.Query, registered: dict[str, str]) -> set[str]:
    """Every FROM/JOIN source must be a registered table, a visible CTE, a subquery or VALUES."""
    used: set[str] = set()
    for source in _sources(query):
        if isinstance(source, (exp.Subquery, exp.Values)):
            continue
        if not isinstance(source, exp.Table):
            raise _table_function_refusal(_function_name(source))
        if not isinstance(source.this, exp.Identifier):
            raise _table_function_refusal(_function_name(source.this))
        name = source.name.lower()
        if source.args.get("db") or source.args.get("catalog"):
            raise _unknown_table(".".join(p.name for p in source.parts), registered)
        if name in _visible_ctes(source):
            continue
        if name not in registered:
            raise _unknown_table(source.name, registered)
        used.add(registered[name])
    return used


def _sources(query: exp.Query) -> list[exp.Expr]:
    """What each FROM and JOIN reads, wherever it sits (CTEs, subqueries, set operations)."""
    found: list[exp.Expr] = []
    for node in query.walk():
        if isinstance(node, (exp.From, exp.Join)):
            found.append(node.this)
    # A Table node outside FROM/JOIN (e.g. `TABLE t` shorthand) still names a table to check.
    for table in query.find_all(exp.Table):
        if not any(table is f for f in found):
            found.append(table)
    return found


def _visible_ctes(table: exp.Table) -> set[str]:
    """CTE names in scope at `table`: a CTE sees only the CTEs defined before it."""
    visible: set[str] = set()
    path: list[exp.Expr] = [table]
    node = table.parent
    while node is not None:
        with_ = node.args.get("with_") if isinstance(node, exp.Query) else None
        if isinstance(with_, exp.With):
            for cte in with_.expressions:
                if any(cte is step for step in path):
                    break
                visible.add(cte.alias_or_name.lower())
        path.append(node)
        node = node.parent
    return visible


def _cross_check_with_polars(sql: str, registered: dict[str, str], cte_names: set[str]) -> None:
    """Ask Polars' own parser which tables it would read; refuse any name not allowed.

    This closes parser differentials: were sqlglot to read text differently from Polars
    (comments, quoting), Polars would still name the table function it is about to call.
    """
    from polars._plr import PySQLContext  # private, but it is what pl.sql() itself uses

    try:
        names = PySQLContext.table_identifiers(sql, include_schema=True, unique=True)
    except Exception as exc:  # noqa: BLE001 - any Polars parse failure is a refusal
        raise SqlRefused(
            "The query engine could not parse the SQL", details=str(exc)[:1000]
        ) from exc
    for name in names:
        lowered = name.lower()
        if _FILE_FUNCTION.match(lowered.rsplit(".", 1)[-1]):  # before any name can clear it
            raise _table_function_refusal(lowered)
        if lowered in registered or lowered in cte_names:
            continue
        raise _unknown_table(name, registered)


def _function_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    return node.sql_name().lower() if isinstance(node, exp.Func) else node.key


def _table_function_refusal(name: str) -> SqlRefused:
    return SqlRefused(
        "Table functions such as read_csv are not allowed; query the conversation's tables by name",
        details=f"found {name}",
    )


def _unknown_table(name: str, registered: dict[str, str]) -> SqlRefused:
    available = ", ".join(sorted(registered.values())) or "none (load a dataset first)"
    return SqlRefused(f"Unknown table '{name}'. Available tables: {available}")
