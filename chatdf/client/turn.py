"""One question's turn: posted with the socket already open, its events streamed, an Answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from chatdf.client.errors import (
    ChatdfClientError,
    ConnectionFailed,
    NotSignedIn,
    TimedOut,
    TurnFailed,
)
from chatdf.client.models import Answer, Message
from chatdf.client.socket import EventSocket, SocketDropped
from chatdf.events import ChatComplete, ChatError, ChatToken, ServerEvent

if TYPE_CHECKING:
    from chatdf.client.async_client import AsyncClient

BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 2.0


class ReconnectingSocket:
    """An event socket that re-opens itself when it drops (not when the token is refused)."""

    def __init__(self, open_socket: Callable[[], Awaitable[EventSocket]], reconnect_s: float):
        self._open_socket = open_socket
        self._reconnect_s = reconnect_s
        self._sock: EventSocket | None = None
        self.reconnects = 0

    async def open(self) -> None:
        self._sock = await self._open_socket()

    async def next_event(self, deadline: float | None) -> ServerEvent | None:
        """The next event, or None once a dropped socket is open again: events may have been
        missed meanwhile, so the caller re-reads the state it waits on."""
        while True:
            if self._sock is None:
                await self._reopen()
                return None
            try:
                return await asyncio.wait_for(self._sock.next_event(), _left(deadline))
            except SocketDropped:
                await self.close()

    async def _reopen(self) -> None:
        give_up = time.monotonic() + self._reconnect_s
        delay = BACKOFF_FIRST_S
        while True:
            try:
                self._sock = await self._open_socket()
                self.reconnects += 1
                return
            except SocketDropped as exc:
                if time.monotonic() + delay > give_up:
                    raise ConnectionFailed(
                        f"The event socket could not be re-opened within {self._reconnect_s:g} s",
                        exc.details,
                    ) from exc
            await asyncio.sleep(delay)  # a retry's back-off, not a synchronisation
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            await sock.close()


def _left(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


class AsyncTurn:
    """`async for event in turn` streams the turn's events as `chatdf.events` models (never
    pings); `await turn` (or `await turn.result()`) runs it to the end and returns the Answer.
    The question is posted when the turn is first iterated or awaited, not before."""

    def __init__(
        self,
        client: AsyncClient,
        conversation_id: str,
        content: str,
        *,
        fetch_result: bool = True,
        timeout_s: float | None = 900.0,
    ) -> None:
        self.client = client
        self.conversation_id = conversation_id
        self.content = content
        self.fetch_result = fetch_result
        self.timeout_s = timeout_s
        self.message_id: str | None = None
        self.answer: Answer | None = None
        self._gen: AsyncGenerator[ServerEvent, None] | None = None
        self._failure: ChatdfClientError | None = None

    def __aiter__(self) -> AsyncTurn:
        return self

    async def __anext__(self) -> ServerEvent:
        if self._gen is None:
            self._gen = self._run()
        try:
            return await self._gen.__anext__()
        except ChatdfClientError as exc:
            self._failure = exc
            raise

    async def result(self) -> Answer:
        """Runs the turn to its end (the events not yet read are dropped) and returns its Answer;
        raises what ended it otherwise, every time it is asked."""
        async for _ in self:
            pass
        if self._failure is not None:
            raise self._failure
        if self.answer is None:
            raise ChatdfClientError("The turn was closed before it ended")
        return self.answer

    def __await__(self) -> Generator[Any, None, Answer]:
        return self.result().__await__()

    async def stop(self) -> None:
        """Asks the server to stop the turn; it ends with the partial answer saved."""
        await self.client.stop(self.conversation_id)

    async def aclose(self) -> None:
        """Stops reading (closes the socket); the turn itself goes on server-side."""
        if self._gen is not None:
            await self._gen.aclose()

    async def _run(self) -> AsyncGenerator[ServerEvent, None]:
        if self.answer is not None:
            return
        client, conv = self.client, self.conversation_id
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        sock = ReconnectingSocket(client.open_socket, client.reconnect_timeout_s)
        await sock.open()  # subscribed before the post: no token of the answer is missed
        try:
            accepted = await client.request(
                "POST", f"/conversations/{conv}/messages", json={"content": self.content}
            )
            self.message_id = str(accepted["message_id"])
            complete: ChatComplete | None = None
            saved: Message | None = None
            while complete is None and saved is None:
                try:
                    event = await sock.next_event(deadline)
                except TimeoutError:
                    raise TimedOut(f"The answer did not end within {self.timeout_s:g} s") from None
                if event is None:
                    saved = await self._saved_answer()
                    continue
                if not self._is_ours(event):
                    continue
                yield event
                if isinstance(event, ChatError):
                    raise TurnFailed(event.error, event.details, conv, event.message_id)
                if isinstance(event, ChatComplete):
                    complete = event
        finally:
            await sock.close()
        if complete is not None:
            message = Message.model_validate(complete.message.model_dump(mode="json"))
            self.answer = await self._finish(message, complete.token_count, recovered=False)
        elif saved is not None:
            self.answer = await self._finish(saved, saved.token_count, recovered=True)

    def _is_ours(self, event: ServerEvent) -> bool:
        conv = getattr(event, "conversation_id", None)
        if conv is not None and conv != self.conversation_id:
            return False
        if isinstance(event, ChatToken | ChatComplete):
            return event.message_id == self.message_id
        return not (
            isinstance(event, ChatError) and event.message_id not in (None, self.message_id)
        )

    async def _saved_answer(self) -> Message | None:
        """After a reconnect: the answer, if the turn ended (and was saved) while we were away."""
        detail = await self.client.get_conversation(self.conversation_id)
        return next((m for m in detail.messages if m.id == self.message_id), None)

    async def _finish(self, message: Message, token_count: int, *, recovered: bool) -> Answer:
        result, result_error = None, None
        if message.sql_query and self.fetch_result:
            try:
                result = await self.client.query(self.conversation_id, message.sql_query)
            except NotSignedIn:
                raise
            except ChatdfClientError as exc:
                result_error = str(exc)
        try:
            usage = await self.client.usage()
        except NotSignedIn:
            raise
        except ChatdfClientError:
            usage = None  # the answer is saved; a budget read that failed must not lose it
        return Answer(
            conversation_id=self.conversation_id,
            message=message,
            sql_query=message.sql_query,
            token_count=token_count,
            result=result,
            result_error=result_error,
            usage=usage,
            recovered=recovered,
        )
