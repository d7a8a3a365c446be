"""Chat inside a session actor: admits messages, runs turns as tasks, saves and reports them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from actors import llm, observe
from actors.answers import ANSWER_INTERRUPTED, Answers
from actors.budget import TokenBudget
from actors.datasets import DatasetLoader
from actors.llm import ModelClient, make_client, not_configured
from actors.turn import Turn
from chatdf import events, logs, schemas, tracing
from chatdf.db import Database, Message, new_id
from chatdf.errors import (
    BadRequest,
    ChatdfError,
    Conflict,
    OverBudget,
    TooManyRequests,
    Unavailable,
)
from chatdf.settings import Settings
from chatdf.store import (
    dataset_json,
    datasets_of,
    history_json,
    messages_of,
    owned_conversation,
    table_json,
    touch,
)

log = logging.getLogger(__name__)

Publish = Callable[[dict[str, Any]], Awaitable[None]]
Context = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # a turn's history and datasets
CHAT_STILL_WORKS = " to chat (datasets and SQL still work)"  # after the sentence of not_configured
NO_MODEL = llm.NO_MODEL + CHAT_STILL_WORKS  # the gemini provider's
UNEXPECTED = "Something went wrong while generating the answer"
TURN_TIMED_OUT = "The answer took longer than {seconds} seconds and was stopped"
NOT_SAVED = "The answer could not be saved; try again in a moment"


@dataclass
class RunningTurn:
    message_id: str
    task: asyncio.Task[None] | None = None
    started: bool = False
    stop_requested: bool = False
    clock: observe.PhaseClock = field(default_factory=observe.PhaseClock)


def _context(s: Session, conversation_id: str) -> Context:
    history = [history_json(m) for m in messages_of(s, conversation_id)]
    datasets = [dataset_json(d) for d in datasets_of(s, conversation_id)]
    return history, datasets


def _partial(runner: Turn | None) -> Mapping[str, Any]:
    return runner.partial() if runner is not None else {"content": ""}


class ChatRunner:
    """One user's turns: at most one per conversation, any number across conversations."""

    def __init__(
        self,
        user_id: str,
        settings: Settings,
        db: Database,
        publish: Publish,
        budget: TokenBudget,
        datasets: DatasetLoader,
    ) -> None:
        self.user_id = user_id
        self.settings = settings
        self.db = db
        self.publish = publish
        self.budget = budget
        self.datasets = datasets
        self._turns: dict[str, RunningTurn] = {}
        self._llm: ModelClient | None = None
        self.answers = Answers(user_id, db, settings.turn_save_interval_s)
        # Conversations whose answer an older deploy's actor is still writing (a handover,
        # actors/session.py): they count as running here until it has finished.
        self.elsewhere: set[str] = set()

    def running_count(self) -> int:
        return len(self._turns)

    def running_conversations(self) -> list[str]:
        return list(self._turns)

    def running_messages(self) -> dict[str, str]:
        """The running turns: conversation id -> the id of the answer being written."""
        return {conv: turn.message_id for conv, turn in self._turns.items()}

    def running_tasks(self) -> list[asyncio.Task[None]]:
        return [turn.task for turn in self._turns.values() if turn.task is not None]

    # Admission -----------------------------------------------------------------------------

    async def post(self, conversation_id: str, content: object) -> dict[str, Any]:
        """Saves the user message and starts a turn; 409 while one runs, 429 over budget."""
        text = self._validate(content)  # ownership: the edge checked; saving checks again
        if conversation_id in self._turns or conversation_id in self.elsewhere:
            raise Conflict("A response is already being generated for this conversation")
        running = len(self._turns) + len(self.elsewhere)
        cap = self.settings.max_concurrent_turns_per_user
        if running >= cap:
            raise TooManyRequests(
                f"{cap} answers are being generated already; wait for one to finish",
                "MAX_CONCURRENT_TURNS_PER_USER",
            )
        if self.budget.is_exceeded():
            await self.publish(self.budget.exceeded_event(conversation_id).wire())
            observe.budget_refused("exceeded")
            self.budget.check()
        # Each running turn holds an estimate of what it will spend, so a user near the limit
        # cannot start many turns at once (docs/budgets.md: the bound on overshoot).
        reserved = running * self.settings.turn_token_reserve
        if self.budget.is_exceeded(reserved):
            observe.budget_refused("reserved")
            raise TooManyRequests(
                "The answers already running may use the rest of your daily token budget; "
                "wait for one to finish",
                f"{self.budget.used()} tokens used, {reserved} held for running answers, "
                f"limit {self.budget.limit}",
            )
        missing = not_configured(self.settings)
        if missing:
            sentence = missing + CHAT_STILL_WORKS
            await self.publish(
                events.ChatError(conversation_id=conversation_id, error=sentence).wire()
            )
            raise Unavailable(sentence)
        turn = RunningTurn(message_id=new_id())
        self._turns[conversation_id] = turn  # claimed before any await: no double turn
        try:
            context = await asyncio.to_thread(self._save_user_message, conversation_id, text)
        except BaseException:
            self._turns.pop(conversation_id, None)
            raise
        queued = events.QueryStatus(conversation_id=conversation_id, phase="queued")
        await turn.clock.watching(self.publish)(queued.wire())
        turn.task = asyncio.get_running_loop().create_task(
            self._run(conversation_id, turn, text, context)
        )
        return {"message_id": turn.message_id, "status": "processing"}

    def _validate(self, content: object) -> str:
        if not isinstance(content, str) or not content.strip():
            raise BadRequest("Message content must be a non-empty string")
        if len(content) > self.settings.max_message_chars:
            raise BadRequest(
                f"Message is too long (at most {self.settings.max_message_chars} characters)"
            )
        return content

    def _save_user_message(self, conversation_id: str, text: str) -> Context:
        """Reads the turn's context (the history before this message, the datasets) and saves
        the message, in one session: one thread hop per message, not two. The reads come first,
        so SQLite's write lock (taken at the insert) is held only for the insert and the update:
        under load many actors' saves wait on each other for it."""
        with self.db.session() as s:
            conv = owned_conversation(s, self.user_id, conversation_id)
            context = _context(s, conversation_id)
            s.add(Message(conversation_id=conv.id, role="user", content=text))
            touch(conv)
        return context

    async def stop(self, conversation_id: str) -> bool:
        """Cancels the running turn (its partial answer is saved); False when none runs."""
        turn = self._turns.get(conversation_id)
        if turn is None:
            return False
        turn.stop_requested = True
        if turn.task is None:  # still being admitted: the turn stops as soon as it starts
            return True
        if turn.started:
            # Not before: a task cancelled before its first step never runs its cleanup.
            turn.task.cancel()
        await asyncio.gather(turn.task, return_exceptions=True)
        return True

    # SQL ----------------------------------------------------------------------------------

    async def query(self, conversation_id: str, sql: object) -> dict[str, Any]:
        """Runs SQL on the conversation's ready datasets under the sandbox and limits."""
        if not isinstance(sql, str) or not sql.strip():
            raise BadRequest("sql must be a non-empty string")
        tables = await asyncio.to_thread(self._ready_tables, conversation_id)
        return await self._run_sql(sql, tables)

    async def _tool_query(self, sql: str, datasets: list[dict[str, Any]]) -> dict[str, Any]:
        """The model's execute_sql: on the datasets the turn already holds (read once, when the
        turn started, plus what it loaded), not a database read per call."""
        tables = [table_json(d) for d in datasets if d.get("status") == "ready"]
        return await self._run_sql(sql, tables)

    async def _run_sql(self, sql: str, tables: list[dict[str, Any]]) -> dict[str, Any]:
        """One query as a Ray task; a copy it downloads again counts against this user's share
        of the cache."""
        from actors.tasks import run_sql

        owned = [{**table, "owner": self.user_id} for table in tables]
        result: dict[str, Any] = await run_sql(sql, owned, self.settings)
        return result

    def _ready_tables(self, conversation_id: str) -> list[dict[str, Any]]:
        with self.db.session() as s:
            owned_conversation(s, self.user_id, conversation_id)
            return [
                table_json(dataset_json(d))
                for d in datasets_of(s, conversation_id)
                if d.status == "ready"
            ]

    # The turn -----------------------------------------------------------------------------

    def _turn(self, conversation_id: str, turn: RunningTurn, text: str, context: Context) -> Turn:
        history, datasets = context
        return Turn(
            settings=self.settings,
            llm=observe.traced_model(self.llm(), self.settings),
            conversation_id=conversation_id,
            message_id=turn.message_id,
            history=history,  # before the message this turn answers
            datasets=datasets,
            user_content=text,
            emit=turn.clock.watching(self.publish),
            run_sql=self._tool_query,
            load_dataset=lambda url: self.datasets.add_and_wait(conversation_id, url),
            record_usage=lambda i, o: self._record_usage(conversation_id, i, o),
        )

    def llm(self) -> ModelClient:
        """The configured provider's client: built at the first turn, reused by every later one
        (its SDK, HTTP connections and parsed types stay warm across turns)."""
        if self._llm is None:
            self._llm = make_client(self.settings)
        return self._llm

    async def _run(
        self, conversation_id: str, turn: RunningTurn, text: str, context: Context
    ) -> None:
        """The turn's task: its log lines carry its ids, its span (when tracing) holds the
        model calls and SQL, its duration and outcome are recorded."""
        logs.bind(conversation_id=conversation_id, message_id=turn.message_id)  # this task's
        attributes = {
            "chatdf.conversation_id": conversation_id,
            "chatdf.message_id": turn.message_id,
        }
        with tracing.span(self.settings, "chat.turn", attributes):
            outcome = await self._run_turn(conversation_id, turn, text, context)
        turn.clock.end(outcome)
        log.info("turn %s after %.2f s", outcome, turn.clock.elapsed_s())

    async def _run_turn(
        self, conversation_id: str, turn: RunningTurn, text: str, context: Context
    ) -> str:
        """However the turn ends (answer, stop, error, deadline, a failed save), what it
        produced is saved if it can be, and exactly one chat_complete or chat_error goes out.
        Returns the outcome: complete, stopped or error."""
        turn.started = True
        stopped = False
        runner: Turn | None = None
        error: ChatdfError | None = None
        result: Mapping[str, Any] | None = None
        finished = asyncio.Event()
        saver: asyncio.Task[None] | None = None
        try:
            if turn.stop_requested:  # stopped before it began
                raise asyncio.CancelledError
            runner = self._turn(conversation_id, turn, text, context)
            saver = asyncio.get_running_loop().create_task(
                self.answers.save_while_streaming(
                    conversation_id, turn.message_id, runner, finished
                )
            )
            async with asyncio.timeout(self.settings.turn_timeout_s):
                result = await runner.run()
        except asyncio.CancelledError:
            stopped = True  # the partial answer is saved below
        except TimeoutError:
            error = ChatdfError(TURN_TIMED_OUT.format(seconds=f"{self.settings.turn_timeout_s:g}"))
        except ChatdfError as exc:
            error = exc
        except Exception as exc:
            log.exception("turn failed in conversation %s", conversation_id)
            error = ChatdfError(UNEXPECTED, f"{type(exc).__name__}: {exc}")
        finished.set()
        while saver is not None and not saver.done():
            # Its write in progress ends first: the final save below must be the last one.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(saver)
        saved: dict[str, Any] | None = None
        try:
            answer = result if result is not None else _partial(runner)
            saved = await self.answers.save(conversation_id, turn.message_id, answer)
        except Exception as exc:  # e.g. the database locked, or a value it refuses
            log.exception("could not save the answer in conversation %s", conversation_id)
            error = error or ChatdfError(NOT_SAVED, f"{type(exc).__name__}")
        finally:
            self._turns.pop(conversation_id, None)
        await self._report(conversation_id, turn.message_id, saved, error)
        return "error" if error is not None else "stopped" if stopped else "complete"

    async def _report(
        self,
        conversation_id: str,
        message_id: str,
        saved: dict[str, Any] | None,
        error: ChatdfError | None,
    ) -> None:
        if error is not None:
            await self.publish(
                events.ChatError(
                    conversation_id=conversation_id,
                    error=error.error,
                    details=error.details,
                    message_id=message_id,
                ).wire()
            )
        elif saved is not None:
            await self.publish(
                events.ChatComplete(
                    conversation_id=conversation_id,
                    message_id=message_id,
                    token_count=saved["token_count"],
                    sql_query=saved["sql_query"],
                    message=schemas.Message.model_validate(saved),
                ).wire()
            )
        if self.budget.warning_due():
            await self.publish(self.budget.warning_event(conversation_id).wire())

    async def _record_usage(self, conversation_id: str, inp: int, out: int) -> None:
        observe.model_tokens(self.settings.gemini_model, inp, out)
        await asyncio.to_thread(self.budget.record, inp, out, conversation_id)


__all__ = ["ANSWER_INTERRUPTED", "ChatRunner", "OverBudget"]
