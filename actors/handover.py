"""The taking side of a deploy's handover: the older deploys' actors a new session actor took
its user over from, while they finish the turns and loads they were running.

While they run, the new actor counts their turns and loads against the user's caps (a turn's
conversation answers 409 here), forwards stops and cancels to them, and leaves the rows they
write alone: its start-up sweep of "orphaned" answers and loads waits until they are gone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the edge hub imports `actor_gone` without the chat code
    from actors.chat import ChatRunner
    from actors.datasets import DatasetLoader

log = logging.getLogger(__name__)

RETIRE_TIMEOUT_S = 10.0  # asking an older deploy's actor to retire, or what it still runs


def actor_gone(exc: BaseException) -> bool:
    """The actor died or exited (not merely unreachable for a moment)."""
    return type(exc).__name__ in ("ActorDiedError", "RayActorError")


class Predecessors:
    """The actors this one took its user over from, until each has drained or died."""

    def __init__(self, chat: ChatRunner, datasets: DatasetLoader) -> None:
        self.chat = chat
        self.datasets = datasets
        self._handles: list[Any] = []
        # False once an actor that cannot be told to retire (from before deploys were
        # versioned, or not answering) may still be writing rows: this actor sweeps none.
        self.may_sweep = True

    def __bool__(self) -> bool:
        return bool(self._handles)

    async def take_over(self, handles: list[Any]) -> None:
        """Tells each actor to retire and notes what it still runs."""
        for handle in handles:
            try:
                await asyncio.wait_for(handle.retire.remote(), RETIRE_TIMEOUT_S)
            except Exception as exc:
                if actor_gone(exc):
                    continue
                log.warning("a previous session actor did not retire (%s)", exc)
                self.may_sweep = False
                continue
            self._handles.append(handle)
        await self.refresh()

    async def refresh(self) -> None:
        """What the retiring actors still run, counted here (a turn that ended there frees its
        conversation at once, not when the last of their work ends)."""
        conversations: set[str] = set()
        loads = 0
        for handle in list(self._handles):
            try:
                busy: dict[str, Any] = await asyncio.wait_for(
                    handle.running.remote(), RETIRE_TIMEOUT_S
                )
            except Exception as exc:
                if actor_gone(exc):
                    if handle in self._handles:  # a concurrent refresh (or clear) may have
                        self._handles.remove(handle)
                    continue
                busy = {"conversations": list(self.chat.elsewhere), "loads": 0}
            conversations.update(busy.get("conversations", ()))
            loads += int(busy.get("loads", 0))
        self.chat.elsewhere = conversations
        self.datasets.elsewhere = loads

    async def wait_drained(self) -> None:
        """Returns once every retiring actor has finished its work or died."""
        await asyncio.gather(
            *(handle.drained.remote() for handle in self._handles), return_exceptions=True
        )

    def clear(self) -> None:
        self._handles.clear()
        self.chat.elsewhere = set()
        self.datasets.elsewhere = 0

    async def forward(self, method: str, *args: Any) -> list[Any]:
        """The same call on each retiring actor; the answers of those still there."""
        answers = []
        for handle in list(self._handles):
            try:
                answers.append(await getattr(handle, method).remote(*args))
            except Exception as exc:
                if not actor_gone(exc):
                    raise
        return answers
