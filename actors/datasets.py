"""A user's dataset rows: admission rules, loads run as Ray tasks, and their progress events."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from actors.fetch import DatasetUnreachable
from actors.observe import dataset_load
from chatdf import events, schemas
from chatdf.db import Conversation, Database, Dataset, utcnow
from chatdf.errors import (
    BadRequest,
    ChatdfError,
    DatasetError,
    NotFound,
    TooManyRequests,
    UpstreamFailed,
)
from chatdf.settings import Settings
from chatdf.store import dataset_json, datasets_of, owned_conversation, touch

log = logging.getLogger(__name__)

Publish = Callable[[dict[str, Any]], Awaitable[None]]
INTERRUPTED = "Loading was interrupted before it finished. Refresh the dataset to try again."
ALREADY_LOADED = "This dataset is already loaded"
MAX_URL_CHARS = 2048  # the datasets.url column


class DatasetLoader:
    """Admits datasets for one user's conversations and drives their load tasks."""

    def __init__(self, user_id: str, settings: Settings, db: Database, publish: Publish) -> None:
        self.user_id = user_id
        self.settings = settings
        self.db = db
        self.publish = publish
        self._loads: dict[str, tuple[str, asyncio.Task[dict[str, Any]]]] = {}
        # Adds run in threads; one at a time, so racing adds cannot both pass the duplicate,
        # count and table-name checks (all of a user's adds go through this one actor).
        self._admission = threading.Lock()
        self.elsewhere = 0  # loads an older deploy's actor is still running (a handover)

    def running_count(self) -> int:
        return len(self._loads)

    def running_loads(self) -> dict[str, str]:
        """The running loads: dataset id -> its conversation id."""
        return {dataset_id: conv for dataset_id, (conv, _task) in self._loads.items()}

    def running_tasks(self) -> list[asyncio.Task[dict[str, Any]]]:
        return [task for _conv, task in self._loads.values()]

    def fail_orphaned_loads(self) -> int:
        """Rows left 'loading' by a previous actor (crash, restart) end in error, not stuck."""
        with self.db.session() as s:
            owned = select(Conversation.id).where(Conversation.user_id == self.user_id)
            result = s.execute(
                update(Dataset)
                .where(Dataset.status == "loading", Dataset.conversation_id.in_(owned))
                .values(status="error", error=INTERRUPTED)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def cancel_load(self, dataset_id: str) -> bool:
        """Stops a running load (its Ray task is cancelled too); False when none runs."""
        entry = self._loads.get(dataset_id)
        if entry is None:
            return False
        entry[1].cancel()
        return True

    def cancel_conversation(self, conversation_id: str) -> None:
        for conv_id, task in list(self._loads.values()):
            if conv_id == conversation_id:
                task.cancel()

    async def add(self, conversation_id: str, url: str) -> dict[str, Any]:
        """Admits the URL, answers at once, and loads in the background (events follow)."""
        cap = self.settings.max_concurrent_loads_per_user
        # Slow servers must not let one user hold every slot.
        if len(self._loads) + self.elsewhere >= cap:
            raise TooManyRequests(
                f"{cap} datasets are loading already; wait for one to finish",
                "MAX_CONCURRENT_LOADS_PER_USER",
            )
        dataset = await self._admit(conversation_id, url)
        await self.publish(
            events.DatasetLoading(
                conversation_id=conversation_id, dataset_id=dataset["id"], url=dataset["url"]
            ).wire()
        )
        task = asyncio.get_running_loop().create_task(self._load(conversation_id, dataset))
        self._loads[dataset["id"]] = (conversation_id, task)
        task.add_done_callback(functools.partial(self._forget, dataset["id"]))
        return {"dataset_id": dataset["id"], "status": "loading"}

    def _forget(self, dataset_id: str, task: asyncio.Task[dict[str, Any]]) -> None:
        self._loads.pop(dataset_id, None)
        if not task.cancelled():
            task.exception()  # already reported through events; mark it retrieved

    async def add_and_wait(self, conversation_id: str, url: str) -> dict[str, Any]:
        """The model's load_dataset tool: admit, load, and return the ready dataset."""
        started = await self.add(conversation_id, url)
        entry = self._loads.get(started["dataset_id"])
        if entry is None:  # finished already
            return await asyncio.to_thread(self._dataset, conversation_id, started["dataset_id"])
        return await asyncio.shield(entry[1])

    async def refresh(self, conversation_id: str, dataset_id: str) -> dict[str, Any]:
        """Re-reads the schema; the row only changes when the URL answers (else 502)."""
        current = await asyncio.to_thread(self._dataset, conversation_id, dataset_id)
        try:
            info = await self._inspect(current["url"])
        except DatasetUnreachable as exc:
            error = f"Could not refresh the dataset: {exc.error}"
            raise UpstreamFailed(error, exc.details) from None
        except DatasetError as exc:
            raise BadRequest(f"Could not refresh the dataset: {exc.error}", exc.details) from None
        dataset = await asyncio.to_thread(self._mark_ready, dataset_id, info)
        if dataset is None:
            raise NotFound("Dataset not found")
        await self._publish_loaded(conversation_id, dataset)
        return dataset

    # Internals -----------------------------------------------------------------------------

    async def _admit(self, conversation_id: str, url: str) -> dict[str, Any]:
        from actors.fetch import validate_url

        if not isinstance(url, str) or not url.strip():
            raise BadRequest("Invalid URL format", "url must be a non-empty string")
        url = url.strip()
        if len(url) > MAX_URL_CHARS:
            details = f"the URL is longer than {MAX_URL_CHARS} characters"
            raise BadRequest("Invalid URL format", details)
        try:
            validate_url(url)
        except DatasetError as exc:
            raise BadRequest("Invalid URL format", exc.details) from None
        return await asyncio.to_thread(self._insert, conversation_id, url)

    def _insert(self, conversation_id: str, url: str) -> dict[str, Any]:
        for attempt in (1, 2):
            try:
                with self._admission:
                    return self._insert_row(conversation_id, url)
            except IntegrityError:
                # The same URL added by another process (e.g. a restarted actor), or the chosen
                # name taken by a rename in between: a second pass tells which and picks anew.
                if attempt == 2:
                    raise BadRequest(ALREADY_LOADED) from None
        raise AssertionError("unreachable")

    def _insert_row(self, conversation_id: str, url: str) -> dict[str, Any]:
        with self.db.session() as s:
            conv = owned_conversation(s, self.user_id, conversation_id)
            existing = datasets_of(s, conversation_id)
            if any(d.url == url for d in existing):
                raise BadRequest(ALREADY_LOADED)
            if len(existing) >= self.settings.max_datasets_per_conversation:
                raise BadRequest(
                    f"Maximum {self.settings.max_datasets_per_conversation} datasets reached"
                )
            position = (
                s.scalar(
                    select(func.max(Dataset.position)).where(Dataset.conversation_id == conv.id)
                )
                or 0
            ) + 1
            taken = {d.name.lower() for d in existing}
            while f"table{position}" in taken:
                position += 1
            row = Dataset(
                conversation_id=conv.id, url=url, name=f"table{position}", position=position
            )
            s.add(row)
            touch(conv)
            s.flush()
            return dataset_json(row)

    def _dataset(self, conversation_id: str, dataset_id: str) -> dict[str, Any]:
        with self.db.session() as s:
            owned_conversation(s, self.user_id, conversation_id)
            row = s.get(Dataset, dataset_id)
            if row is None or row.conversation_id != conversation_id:
                raise NotFound("Dataset not found")
            return dataset_json(row)

    async def _inspect(self, url: str) -> dict[str, Any]:
        from actors.tasks import load_url

        with dataset_load(self.settings):  # duration by outcome; a span when tracing
            try:
                return await load_url(url, self.settings, self.user_id)
            except TimeoutError:
                raise DatasetError(
                    f"Loading the dataset took longer than "
                    f"{self.settings.dataset_total_timeout_s:g} seconds"
                ) from None

    async def _load(self, conversation_id: str, dataset: dict[str, Any]) -> dict[str, Any]:
        dataset_id = dataset["id"]
        try:
            info = await self._inspect(dataset["url"])
        except ChatdfError as exc:
            await self._fail(conversation_id, dataset_id, exc.error)
            raise DatasetError(exc.error, exc.details) from None
        except asyncio.CancelledError:
            await asyncio.to_thread(self._mark_error, dataset_id, INTERRUPTED)
            raise
        except Exception:  # a crashed task must still end the row in error
            log.exception("dataset load %s failed", dataset_id)
            await self._fail(conversation_id, dataset_id, "Loading the dataset failed unexpectedly")
            raise DatasetError("Loading the dataset failed unexpectedly") from None  # log has it
        ready = await asyncio.to_thread(self._mark_ready, dataset_id, info)
        if ready is None:  # deleted while loading
            raise DatasetError("The dataset was removed while it was loading")
        await self._publish_loaded(conversation_id, ready)
        return ready

    async def _fail(self, conversation_id: str, dataset_id: str, error: str) -> None:
        if await asyncio.to_thread(self._mark_error, dataset_id, error):
            await self.publish(
                events.DatasetError(
                    conversation_id=conversation_id, dataset_id=dataset_id, error=error
                ).wire()
            )

    async def _publish_loaded(self, conversation_id: str, dataset: dict[str, Any]) -> None:
        await self.publish(
            events.DatasetLoaded(
                conversation_id=conversation_id,
                dataset_id=dataset["id"],
                name=dataset["name"],
                row_count=dataset["row_count"] or 0,
                column_count=dataset["column_count"] or 0,
                schema=dataset["schema"],
                dataset=schemas.Dataset.model_validate(dataset),
            ).wire()
        )

    def _mark_ready(self, dataset_id: str, info: dict[str, Any]) -> dict[str, Any] | None:
        with self.db.session() as s:
            row = s.get(Dataset, dataset_id)
            if row is None:
                return None
            row.status = "ready"
            row.error = None
            row.format = info["format"]
            row.row_count = int(info["row_count"])
            row.column_count = int(info["column_count"])
            row.schema_json = json.dumps(info["schema"])
            read_at = info.get("read_at")
            row.loaded_at = datetime.fromtimestamp(read_at, UTC) if read_at else utcnow()
            conv = s.get(Conversation, row.conversation_id)
            if conv is not None:
                touch(conv, utcnow())
            return dataset_json(row)

    def _mark_error(self, dataset_id: str, error: str) -> bool:
        with self.db.session() as s:
            row = s.get(Dataset, dataset_id)
            if row is None:
                return False
            row.status = "error"
            row.error = error
            return True
