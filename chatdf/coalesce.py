"""Concurrent asks for keys answered together: one blocking call, in a thread, per batch.

What the edge looks up per request or socket (a sign-in, a user's session actor) costs far less
asked for many keys at once than key by key on many threads: a burst of 200 sockets opening at
once was 200 threads contending for the GIL on 2 cores. Here the asks that arrive while a batch
is being answered wait for the next batch; a lone ask costs one call, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Executor
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """`await ask(key)`: `answer(keys)[key]`, or None when the answer leaves the key out.

    `answer` runs on `executor` (the loop's default when None), one batch of at most `max_batch`
    distinct keys at a time; an exception it raises reaches every ask of that batch.
    """

    def __init__(
        self,
        answer: Callable[[list[K]], Mapping[K, V]],
        *,
        max_batch: int,
        executor: Executor | None = None,
    ) -> None:
        self._answer = answer
        self._max_batch = max_batch
        self._executor = executor
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._drainer: asyncio.Task[None] | None = None

    async def ask(self, key: K) -> V | None:
        answer: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(answer)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await answer

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            keys = list(self._waiting)[: self._max_batch]
            batch = {key: self._waiting.pop(key) for key in keys}
            try:
                found = await loop.run_in_executor(self._executor, self._answer, keys)
            except Exception as exc:
                for answers in batch.values():
                    for answer in answers:
                        if not answer.done():
                            answer.set_exception(exc)
                continue
            for key, answers in batch.items():
                for answer in answers:
                    if not answer.done():  # an asker that went away
                        answer.set_result(found.get(key))
