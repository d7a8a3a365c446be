"""`Client`: the blocking form of `AsyncClient`, running it on an event loop in its own thread
(so it works in scripts and inside a notebook, whose own loop is already running)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from chatdf.client.async_client import DEFAULT_URL, AsyncClient
from chatdf.client.models import (
    Answer,
    Conversation,
    ConversationDetail,
    Dataset,
    QueryResult,
    Usage,
    User,
)
from chatdf.client.turn import AsyncTurn
from chatdf.events import ServerEvent

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread; `run()` blocks on one coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="chatdf-client", daemon=True
        )
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a sync chatdf Client cannot be used from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class Turn:
    """`for event in turn` streams the events; `turn.result()` waits for the Answer."""

    def __init__(self, loop: _LoopThread, turn: AsyncTurn) -> None:
        self._loop = loop
        self._turn = turn
        # The step in flight: Ctrl-C interrupts the wait, not the step, so the next call
        # (after `stop()`, say) waits on the same one instead of starting a second.
        self._step: concurrent.futures.Future[ServerEvent] | None = None

    def __iter__(self) -> Iterator[ServerEvent]:
        return self

    def __next__(self) -> ServerEvent:
        if self._step is None:
            self._step = self._loop.submit(_next(self._turn))
        try:
            event = self._step.result()
        except StopAsyncIteration:
            self._step = None
            raise StopIteration from None
        except KeyboardInterrupt:
            raise
        except BaseException:
            self._step = None
            raise
        self._step = None
        return event

    def result(self) -> Answer:
        return self._loop.run(self._turn.result())

    @property
    def answer(self) -> Answer | None:
        """The Answer once the events are read to the end, else None."""
        return self._turn.answer

    @property
    def message_id(self) -> str | None:
        return self._turn.message_id

    def stop(self) -> None:
        self._loop.run(self._turn.stop())

    def close(self) -> None:
        self._loop.run(self._turn.aclose())


async def _next(turn: AsyncTurn) -> ServerEvent:
    return await turn.__anext__()


class Client:
    """The blocking client: the same methods as AsyncClient, returning the same models."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout_s: float = 90.0,
        reconnect_timeout_s: float = 60.0,
    ) -> None:
        self._loop = _LoopThread()
        self._async = self._loop.run(_make(url, token, timeout_s, reconnect_timeout_s))

    @property
    def url(self) -> str:
        return self._async.url

    @property
    def token(self) -> str | None:
        return self._async.token

    @token.setter
    def token(self, value: str | None) -> None:
        self._async.token = value

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            self._loop.run(self._async.aclose())
            self._loop.close()

    def dev_login(
        self, email: str | None = None, name: str | None = None, referral_key: str | None = None
    ) -> User:
        return self._loop.run(self._async.dev_login(email, name, referral_key))

    def me(self) -> User:
        return self._loop.run(self._async.me())

    def logout(self) -> None:
        self._loop.run(self._async.logout())

    def usage(self) -> Usage:
        return self._loop.run(self._async.usage())

    def create_conversation(self, title: str | None = None) -> Conversation:
        return self._loop.run(self._async.create_conversation(title))

    def list_conversations(self) -> list[Conversation]:
        return self._loop.run(self._async.list_conversations())

    def get_conversation(self, conversation_id: str) -> ConversationDetail:
        return self._loop.run(self._async.get_conversation(conversation_id))

    def rename_conversation(self, conversation_id: str, title: str) -> Conversation:
        return self._loop.run(self._async.rename_conversation(conversation_id, title))

    def delete_conversation(self, conversation_id: str) -> None:
        self._loop.run(self._async.delete_conversation(conversation_id))

    def delete_all_conversations(self) -> int:
        return self._loop.run(self._async.delete_all_conversations())

    def add_dataset(
        self, conversation_id: str, url: str, *, wait: bool = True, timeout_s: float = 600.0
    ) -> Dataset:
        coro = self._async.add_dataset(conversation_id, url, wait=wait, timeout_s=timeout_s)
        return self._loop.run(coro)

    def rename_dataset(self, conversation_id: str, dataset_id: str, table_name: str) -> Dataset:
        return self._loop.run(self._async.rename_dataset(conversation_id, dataset_id, table_name))

    def refresh_dataset(self, conversation_id: str, dataset_id: str) -> Dataset:
        return self._loop.run(self._async.refresh_dataset(conversation_id, dataset_id))

    def delete_dataset(self, conversation_id: str, dataset_id: str) -> None:
        self._loop.run(self._async.delete_dataset(conversation_id, dataset_id))

    def ask(
        self,
        conversation_id: str,
        question: str,
        *,
        fetch_result: bool = True,
        timeout_s: float | None = 900.0,
    ) -> Turn:
        """`for event in client.ask(...)` streams; `client.ask(...).result()` waits."""
        turn = self._async.ask(
            conversation_id, question, fetch_result=fetch_result, timeout_s=timeout_s
        )
        return Turn(self._loop, turn)

    def stop(self, conversation_id: str) -> None:
        self._loop.run(self._async.stop(conversation_id))

    def query(self, conversation_id: str, sql: str) -> QueryResult:
        return self._loop.run(self._async.query(conversation_id, sql))


async def _make(url: str, token: str | None, timeout_s: float, reconnect_s: float) -> AsyncClient:
    # Built on the loop thread, so httpx's pool belongs to the loop that will use it.
    return AsyncClient(url, token, timeout_s=timeout_s, reconnect_timeout_s=reconnect_s)
