"""`AsyncClient`: every REST route of the contract as a typed coroutine, plus `ask()` and
dataset loads that wait for their events on the socket."""

from __future__ import annotations

import time
from typing import Any

import httpx

from chatdf.client.errors import (
    ApiError,
    ConnectionFailed,
    DatasetFailed,
    ProtocolError,
    TimedOut,
    error_from_response,
)
from chatdf.client.models import (
    Conversation,
    ConversationDetail,
    Dataset,
    QueryResult,
    Usage,
    User,
)
from chatdf.client.socket import EventSocket, ws_url_of
from chatdf.client.turn import AsyncTurn, ReconnectingSocket
from chatdf.events import DatasetError, DatasetLoaded

DEFAULT_URL = "http://127.0.0.1:8000"


class AsyncClient:
    """A signed-in user of one chatdf server. Pass a session `token`, or call `dev_login()`
    (when the server allows it). Use it as `async with AsyncClient(...) as client:`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout_s: float = 90.0,
        reconnect_timeout_s: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.reconnect_timeout_s = reconnect_timeout_s
        # A query may run QUERY_TIMEOUT_S (60 s) before it answers: the default leaves room.
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout_s)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # Plumbing -----------------------------------------------------------------------------

    async def request(self, method: str, path: str, json: Any = None) -> Any:
        """One REST call; the decoded JSON answer, or the contract's error as an exception."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = await self._http.request(method, path, json=json, headers=headers)
        except httpx.TransportError as exc:
            raise ConnectionFailed(
                f"Cannot reach chatdf at {self.url}", f"{type(exc).__name__}: {exc}"[:300]
            ) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        try:
            return response.json()
        except ValueError as exc:
            raise ProtocolError(
                f"{method} {path} did not answer JSON", response.text[:300]
            ) from exc

    async def open_socket(self) -> EventSocket:
        """A new `/ws` connection for this user (the caller closes it)."""
        if not self.token:
            raise ApiError(401, "Not signed in", "sign in (a token, or dev_login()) first")
        return await EventSocket(ws_url_of(self.url), self.token).open()

    # Auth and usage -----------------------------------------------------------------------

    async def dev_login(
        self, email: str | None = None, name: str | None = None, referral_key: str | None = None
    ) -> User:
        """Signs in through `POST /auth/dev-login` (no email: the local developer user) and
        keeps the token for the calls that follow."""
        fields = (("email", email), ("name", name), ("referral_key", referral_key))
        answer = await self.request("POST", "/auth/dev-login", {k: v for k, v in fields if v})
        self.token = str(answer["token"])
        return User.model_validate(answer["user"])

    async def me(self) -> User:
        return User.model_validate(await self.request("GET", "/auth/me"))

    async def logout(self) -> None:
        await self.request("POST", "/auth/logout")
        self.token = None

    async def usage(self) -> Usage:
        return Usage.model_validate(await self.request("GET", "/usage"))

    # Conversations ------------------------------------------------------------------------

    async def create_conversation(self, title: str | None = None) -> Conversation:
        body = {"title": title} if title is not None else None
        return Conversation.model_validate(await self.request("POST", "/conversations", body))

    async def list_conversations(self) -> list[Conversation]:
        answer = await self.request("GET", "/conversations")
        return [Conversation.model_validate(c) for c in answer["conversations"]]

    async def get_conversation(self, conversation_id: str) -> ConversationDetail:
        answer = await self.request("GET", f"/conversations/{conversation_id}")
        return ConversationDetail.model_validate(answer)

    async def rename_conversation(self, conversation_id: str, title: str) -> Conversation:
        answer = await self.request("PATCH", f"/conversations/{conversation_id}", {"title": title})
        return Conversation.model_validate(answer)

    async def delete_conversation(self, conversation_id: str) -> None:
        await self.request("DELETE", f"/conversations/{conversation_id}")

    async def delete_all_conversations(self) -> int:
        return int((await self.request("DELETE", "/conversations"))["deleted_count"])

    # Datasets -----------------------------------------------------------------------------

    async def add_dataset(
        self, conversation_id: str, url: str, *, wait: bool = True, timeout_s: float = 600.0
    ) -> Dataset:
        """Attaches a dataset by URL. With `wait` (the default) returns once `dataset_loaded`
        arrives, or raises DatasetFailed with the `dataset_error` sentence; without, returns
        the dataset as it is now (status "loading")."""
        path = f"/conversations/{conversation_id}/datasets"
        if not wait:
            created = await self.request("POST", path, {"url": url})
            return await self._dataset(conversation_id, str(created["dataset_id"]))
        sock = ReconnectingSocket(self.open_socket, self.reconnect_timeout_s)
        await sock.open()  # subscribed before the post: the events cannot pass us by
        try:
            created = await self.request("POST", path, {"url": url})
            dataset_id = str(created["dataset_id"])
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    event = await sock.next_event(deadline)
                except TimeoutError:
                    raise TimedOut(f"The dataset did not load within {timeout_s:g} s") from None
                if event is None:  # reconnected: it may have finished meanwhile
                    dataset = await self._dataset(conversation_id, dataset_id)
                    if dataset.status != "loading":
                        return _loaded_or_raise(dataset)
                elif isinstance(event, DatasetLoaded) and event.dataset_id == dataset_id:
                    return Dataset.model_validate(
                        event.dataset.model_dump(mode="json", by_alias=True)
                    )
                elif isinstance(event, DatasetError) and event.dataset_id == dataset_id:
                    raise DatasetFailed(event.error, dataset_id=dataset_id)
        finally:
            await sock.close()

    async def _dataset(self, conversation_id: str, dataset_id: str) -> Dataset:
        detail = await self.get_conversation(conversation_id)
        for dataset in detail.datasets:
            if dataset.id == dataset_id:
                return dataset
        raise ApiError(404, "Dataset not found")

    async def rename_dataset(
        self, conversation_id: str, dataset_id: str, table_name: str
    ) -> Dataset:
        path = f"/conversations/{conversation_id}/datasets/{dataset_id}"
        return Dataset.model_validate(await self.request("PATCH", path, {"table_name": table_name}))

    async def refresh_dataset(self, conversation_id: str, dataset_id: str) -> Dataset:
        path = f"/conversations/{conversation_id}/datasets/{dataset_id}/refresh"
        return Dataset.model_validate(await self.request("POST", path))

    async def delete_dataset(self, conversation_id: str, dataset_id: str) -> None:
        await self.request("DELETE", f"/conversations/{conversation_id}/datasets/{dataset_id}")

    # Chat ---------------------------------------------------------------------------------

    def ask(
        self,
        conversation_id: str,
        question: str,
        *,
        fetch_result: bool = True,
        timeout_s: float | None = 900.0,
    ) -> AsyncTurn:
        """Asks a question. `async for event in client.ask(...)` streams the typed events;
        `answer = await client.ask(...)` waits for the Answer (message, SQL rows, usage).
        `fetch_result=False` skips running the answer's SQL again for its rows."""
        return AsyncTurn(
            self, conversation_id, question, fetch_result=fetch_result, timeout_s=timeout_s
        )

    async def stop(self, conversation_id: str) -> None:
        await self.request("POST", f"/conversations/{conversation_id}/stop")

    async def query(self, conversation_id: str, sql: str) -> QueryResult:
        answer = await self.request("POST", f"/conversations/{conversation_id}/query", {"sql": sql})
        return QueryResult.model_validate(answer)


def _loaded_or_raise(dataset: Dataset) -> Dataset:
    if dataset.status == "error":
        raise DatasetFailed(
            dataset.error or "The dataset could not be loaded", dataset_id=dataset.id
        )
    return dataset
