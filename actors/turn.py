"""One chat turn's tool loop: model calls, tool runs, phases and tokens, caps and the result."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypedDict
from urllib.parse import urlsplit, urlunsplit

from actors.conversation import Entry, ToolCall, ToolResult, ToolResults, UserText
from actors.llm import ContextTooLong, ModelClient, ModelReply, Usage, not_configured
from actors.prompt import (
    build_system_prompt,
    dataset_for_model,
    drop_oldest,
    render_history,
    result_for_model,
    select_history,
    tool_round,
)
from chatdf import events
from chatdf.errors import ChatdfError, Unavailable
from chatdf.events import Phase
from chatdf.settings import Settings

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], Awaitable[None]]
# The SQL and the turn's datasets (it knows them: no database read per tool call).
RunSql = Callable[[str, list[dict[str, Any]]], Awaitable[dict[str, Any]]]
LoadDataset = Callable[[str], Awaitable[dict[str, Any]]]
RecordUsage = Callable[[int, int], Awaitable[Any]]

TOOL_LIMIT_NOTE = (
    "The tool call limit of this answer is reached. Do not call tools again: answer now from "
    "the results you have, and say what you could not check."
)
SQL_GIVE_UP_NOTE = (
    "SQL failed {count} times in this answer. Do not call tools again: explain to the user what "
    "went wrong and what they could try instead."
)
SKIPPED_CALL = "Not run: the tool call limit of this answer is reached."
NO_ANSWER = "I could not finish this answer within the limit of {limit} tool calls."
EMPTY_ANSWER = "The model returned an empty answer. Try rephrasing the question."


class TurnResult(TypedDict):
    content: str
    sql_query: str | None
    token_count: int
    tool_rounds: list[dict[str, Any]]


class Turn:
    """Runs one answer; `partial()` stays readable while it runs and after a cancel or error.

    It emits query_status generating/executing/formatting and chat_token events; the caller
    emits queued (at admission) and chat_complete/chat_error (after saving).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        llm: ModelClient,
        conversation_id: str,
        message_id: str,
        history: Sequence[dict[str, Any]],
        datasets: Sequence[dict[str, Any]],
        user_content: str,
        emit: Emit,
        run_sql: RunSql,
        load_dataset: LoadDataset,
        record_usage: RecordUsage,
    ) -> None:
        self.settings = settings
        self.llm = llm
        self.conversation_id = conversation_id
        self.message_id = message_id
        self.datasets = list(datasets)
        self.user_text = user_content
        # The only URLs the model may load: those the user wrote (issue 10, prompt injection).
        self._user_urls = urls_in(
            [user_content]
            + [str(m.get("content") or "") for m in history if m.get("role") == "user"]
        )
        self._emit = emit
        self._run_sql = run_sql
        self._load_dataset = load_dataset
        self._record_usage = record_usage
        self.history = select_history(
            history,
            max_messages=settings.context_max_messages,
            max_chars=settings.context_max_chars,
            reserve_chars=len(user_content),
        )
        self.content = ""
        self.sql_query: str | None = None
        self.token_count = 0
        self.tool_rounds: list[dict[str, Any]] = []
        self.model_calls = 0
        self._turn_contents: list[Entry] = []
        self._tool_calls = 0
        self._sql_errors = 0
        self._tools_enabled = True
        self._pruned = False
        self._segment_start = True

    def partial(self) -> TurnResult:
        """The answer so far (everything streamed), in the shape `run()` returns."""
        return {
            "content": self.content,
            "sql_query": self.sql_query,
            "token_count": self.token_count,
            "tool_rounds": list(self.tool_rounds),
        }

    async def run(self) -> TurnResult:
        """Loops model call → tools → model call until the model answers without tools."""
        missing = not_configured(self.settings)
        if missing:
            raise Unavailable(missing)
        self._turn_contents = [UserText(self.user_text)]
        await self._phase("generating")
        while True:
            reply = await self._call_model()
            if not reply.calls:
                break
            if not self._tools_enabled:
                # Told to stop calling tools and did anyway: end the turn rather than loop.
                if not self.content.strip():
                    await self._on_text(NO_ANSWER.format(limit=self.settings.max_tool_calls))
                break
            await self._run_tools(reply)
        if not self.content:
            await self._on_text(EMPTY_ANSWER)  # e.g. a safety stop: never save a blank answer
        return self.partial()

    # Model ---------------------------------------------------------------------------------

    async def _call_model(self) -> ModelReply:
        try:
            return await self._generate()
        except ContextTooLong:
            if self._pruned or not self.history:
                raise
            self._pruned = True
            self.history = drop_oldest(self.history)
            return await self._generate()

    async def _generate(self) -> ModelReply:
        system = build_system_prompt(self.datasets, max_tool_calls=self.settings.max_tool_calls)
        contents = render_history(self.history) + self._turn_contents
        self.model_calls += 1
        self._segment_start = True
        return await self.llm.generate(
            system,
            contents,
            tools_enabled=self._tools_enabled,
            on_text=self._on_text,
            on_usage=self._on_usage,
        )

    async def _on_text(self, text: str) -> None:
        if self._segment_start and self.content and not self.content.endswith("\n"):
            # Text after a tool round starts a new paragraph, on the wire as in the saved answer.
            await self._token("\n\n")
        self._segment_start = False
        await self._token(text)

    async def _token(self, text: str) -> None:
        self.content += text
        await self._emit(
            events.ChatToken(
                conversation_id=self.conversation_id, message_id=self.message_id, token=text
            ).wire()
        )

    async def _on_usage(self, usage: Usage) -> None:
        self.token_count += usage.total
        await self._record_usage(usage.input_tokens, usage.output_tokens)

    async def _phase(self, phase: Phase) -> None:
        await self._emit(
            events.QueryStatus(conversation_id=self.conversation_id, phase=phase).wire()
        )

    # Tools ---------------------------------------------------------------------------------

    async def _run_tools(self, reply: ModelReply) -> None:
        self._turn_contents.append(reply.turn)
        results: list[ToolResult] = []
        for call in reply.calls:
            results.append(ToolResult(call, await self._run_tool(call)))
        note = self._stop_note()
        if note:
            self._tools_enabled = False
            results[-1].result["instruction"] = note
        self._turn_contents.append(ToolResults(tuple(results)))

    async def _run_tool(self, call: ToolCall) -> dict[str, Any]:
        name = call.name
        args = dict(call.args)
        if self._tool_calls >= self.settings.max_tool_calls:
            result: dict[str, Any] = {"error": SKIPPED_CALL}
        else:
            self._tool_calls += 1
            await self._phase("executing")
            result = await self._dispatch(name, args)
            await self._phase("formatting")
        self.tool_rounds.append(tool_round(name, args, result, call.signature))
        return result

    async def _dispatch(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "execute_sql":
            return await self._execute_sql(args.get("query"))
        if name == "load_dataset":
            return await self._load(args.get("url"))
        return {"error": f"Unknown tool {name!r}: use execute_sql or load_dataset."}

    async def _execute_sql(self, query: object) -> dict[str, Any]:
        if not isinstance(query, str) or not query.strip():
            self._sql_errors += 1
            return {"error": "execute_sql needs a non-empty 'query' string."}
        try:
            result = await self._run_sql(query, list(self.datasets))
        except ChatdfError as exc:
            self._sql_errors += 1
            return _error(exc)
        self.sql_query = query
        return result_for_model(result)

    async def _load(self, url: object) -> dict[str, Any]:
        if not isinstance(url, str) or not url.strip():
            return {"error": "load_dataset needs a non-empty 'url' string."}
        if normalize_url(url) not in self._user_urls:
            log.warning(
                "turn %s: the model asked to load a URL the user never wrote", self.message_id
            )
            return {"error": URL_NOT_FROM_USER}
        try:
            dataset = await self._load_dataset(url)
        except ChatdfError as exc:
            return _error(exc)
        if dataset.get("status") not in (None, "ready"):
            return {"error": dataset.get("error") or "The dataset could not be loaded."}
        self.datasets = [d for d in self.datasets if d.get("id") != dataset.get("id")]
        self.datasets.append(dataset)
        return dataset_for_model(dataset)

    def _stop_note(self) -> str | None:
        if self._sql_errors > self.settings.max_sql_retries:
            return SQL_GIVE_UP_NOTE.format(count=self._sql_errors)
        if self._tool_calls >= self.settings.max_tool_calls:
            return TOOL_LIMIT_NOTE
        return None


URL_NOT_FROM_USER = (
    "load_dataset only loads URLs the user wrote in this conversation; ask the user to paste "
    "the link if they want it loaded."
)
_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)


def urls_in(texts: Sequence[str]) -> frozenset[str]:
    """Every http(s) URL written in `texts`, normalized; trailing punctuation is not part of it."""
    found = set()
    for text in texts:
        for match in _URL.finditer(text):
            found.add(normalize_url(match.group(0).rstrip(".,;:!?)]}>")))
    return frozenset(found)


def normalize_url(url: str) -> str:
    """Scheme and host are case-insensitive; everything else must match as written."""
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, parts.query, ""))


def _error(exc: ChatdfError) -> dict[str, Any]:
    out: dict[str, Any] = {"error": exc.error}
    if exc.details:
        out["details"] = exc.details
    return out
